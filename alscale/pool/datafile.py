"""One data file of a pool, opened for metadata and piecewise reads.

A file is read in *pieces*: record batches (Arrow IPC) or row groups (Parquet). Local IPC
files are memory-mapped, so a piece's columns are zero-copy views of the page cache; remote
IPC files are read through ``open_input_file``: each batch is fetched whole when touched,
and learning the batch sizes touches every batch -- keep pools on object stores as
Parquet, and IPC for local (per-node) copies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from alscale.errors import PoolError
from alscale.pool.location import Location, one_line

log = logging.getLogger(__name__)


class DataFile:
    """An open IPC or Parquet file: schema, row count, piece sizes, piece reads."""

    def __init__(self, loc: Location, fmt: str) -> None:
        self.loc = loc
        self.fmt = fmt
        try:
            if fmt == "ipc":
                source = (pa.memory_map(loc.path, "r") if loc.is_local
                          else loc.fs.open_input_file(loc.path))
                self._ipc = ipc.open_file(source)
                self.schema: pa.Schema = self._ipc.schema
            else:
                # pre_buffer coalesces the column-chunk reads of a row group (fewer
                # round trips on object stores)
                self._pq = pq.ParquetFile(loc.fs.open_input_file(loc.path), pre_buffer=True)
                self.schema = self._pq.schema_arrow
        except FileNotFoundError as exc:
            raise PoolError(f"pool {loc.display}: no such file; check the path") from exc
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            kind = "an Arrow IPC (Feather v2) file" if fmt == "ipc" else "a Parquet file"
            raise PoolError(f"pool {loc.display}: cannot read it as {kind} ({one_line(exc)}); "
                            "rewrite it with alscale.pool.write_table") from exc

    @property
    def where(self) -> str:
        return self.loc.display

    @cached_property
    def n_rows(self) -> int:
        if self.fmt == "ipc":
            return int(self._ipc.count_rows())
        return int(self._pq.metadata.num_rows)

    @cached_property
    def piece_rows(self) -> tuple[int, ...]:
        """Rows per record batch (IPC) or per row group (Parquet), in file order."""
        if self.fmt == "ipc":
            return tuple(self._ipc.get_batch(i).num_rows
                         for i in range(self._ipc.num_record_batches))
        md = self._pq.metadata
        return tuple(md.row_group(i).num_rows for i in range(md.num_row_groups))

    def read_pieces(self, pieces: Sequence[int], columns: Sequence[str]) -> pa.Table:
        """Columns ``columns`` of the given pieces (contiguous, ascending) as one table.

        IPC: a table whose chunks are zero-copy batches of the memory map.
        Parquet: only those row groups are fetched and decoded.
        """
        try:
            if self.fmt == "ipc":
                batches = [self._ipc.get_batch(i).select(list(columns)) for i in pieces]
                schema = pa.schema([self.schema.field(c) for c in columns])
                return pa.Table.from_batches(batches, schema=schema)
            return self._pq.read_row_groups(list(pieces), columns=list(columns), use_threads=True)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise PoolError(f"pool {self.where}: cannot read rows ({one_line(exc)}); "
                            "the file may be truncated or corrupt -- rewrite it") from exc

    def read_column(self, name: str) -> pa.ChunkedArray:
        """One whole column (IPC: zero-copy chunks; Parquet: only that column is decoded)."""
        if self.fmt == "ipc":
            return self.read_pieces(range(self._ipc.num_record_batches), [name]).column(0)
        try:
            return self._pq.read(columns=[name], use_threads=True).column(0)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise PoolError(f"pool {self.where}: cannot read column '{name}' "
                            f"({one_line(exc)}); the file may be corrupt -- rewrite it") from exc


def open_data_files(locs: Sequence[Location], fmt: str) -> list[DataFile]:
    """Open every data file of a pool (metadata only)."""
    return [DataFile(loc, fmt) for loc in locs]
