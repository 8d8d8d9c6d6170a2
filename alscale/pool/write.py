"""Write pool tables as Arrow IPC or Parquet, atomically on local filesystems.

Every file goes through :class:`alscale.fsio.AtomicFile`, the one atomic-write helper of
all alscale writers. Local paths (and ``file://`` URIs): the data goes to a hidden
temporary file in the target directory (``.NAME.tmp-PID-RANDOM``), is fsync'ed, then
``os.replace``d over the final name (and the directory fsync'ed), so a reader sees either
the old file or the complete new one, never a partial file. Pool directory listings skip
names starting with ``.``, so an in-progress file is never read.

Object stores (``s3://``, ``gs://``) have no rename: the object is written under its final
name directly. S3/GCS make an upload visible only once it completes, but a failed write
may leave a partial object behind (it is deleted on a best-effort basis); callers that need
a commit point should write a small manifest last. A write that fails for a reason outside
the data (a full disk, a read-only location) raises
:class:`~alscale.errors.OutputWriteError`: one line naming the path and the cause.

**One writer per pool file.** A writer holds an OS lock (:class:`~alscale.fsio.DirLock`, an
``flock`` on ``.NAME.lock`` beside the file, hidden from pool listings) from its creation to
:meth:`PoolWriter.close` / :meth:`PoolWriter.abort`: a second writer of the same local path
— another ``alscale pool ...`` or a second ``PoolWriter`` in any process — is refused with
one line naming the holder, instead of both writing and the last complete file silently
winning. The kernel frees the lock however the holder ends. Object-store paths are not
locked (``pyarrow.fs`` has no locking).

Formats: IPC is written uncompressed (Feather's default is LZ4, which defeats
memory-mapping) in record batches of ``rows_per_batch``; Parquet uses zstd, row groups of
``rows_per_batch`` rows and dictionary encoding only for the integer columns.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from alscale.errors import PoolError
from alscale.fsio import AtomicFile, DirLock, write_error
from alscale.pool.location import Location, choose_format, resolve

log = logging.getLogger(__name__)

DEFAULT_ROWS_PER_BATCH = 131072


class PoolWriter:
    """Stream tables into one IPC or Parquet file; :meth:`close` commits, :meth:`abort` discards.

    Use as a context manager: an exception inside the block aborts, leaving no final file
    (and an existing file at ``path`` untouched, for local paths). The schema comes from the
    first table written unless given. ``lock=False`` skips the file's writer lock, for a
    writer whose directory is locked already (a job's output).
    """

    def __init__(self, path: str, schema: pa.Schema | None = None, *, format: str | None = None,
                 rows_per_batch: int = DEFAULT_ROWS_PER_BATCH, lock: bool = True) -> None:
        if int(rows_per_batch) < 1:
            raise PoolError(f"pool {path}: rows_per_batch must be >= 1, got {rows_per_batch}")
        self.path = path
        self.format = choose_format(path, format)
        self.rows_per_batch = int(rows_per_batch)
        self._loc = resolve(path)
        self._schema = schema
        self._lock = _writer_lock(self._loc)
        if lock:
            self._lock.acquire()
        self._file = AtomicFile(self._loc)
        self._sink: pa.NativeFile | None = None
        self._writer: ipc.RecordBatchFileWriter | pq.ParquetWriter | None = None
        self._done = False
        self.rows_written = 0

    # -- lifecycle ---------------------------------------------------------------------
    def _start(self, schema: pa.Schema) -> None:
        self._sink = self._file.open()
        self._schema = schema
        if self.format == "ipc":
            options = ipc.IpcWriteOptions(compression=None)
            self._writer = ipc.new_file(self._sink, schema, options=options)
        else:
            integer_columns = [f.name for f in schema if pa.types.is_integer(f.type)]
            self._writer = pq.ParquetWriter(self._sink, schema, compression="zstd",
                                            use_dictionary=integer_columns or False)

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Append the rows of ``data`` (its schema must match the first table's)."""
        if self._done:
            raise PoolError(f"pool {self.path}: writer is already closed")
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        try:
            if self._writer is None:
                self._start(self._schema if self._schema is not None else table.schema)
            if not table.schema.equals(self._schema):
                raise PoolError(f"pool {self.path}: table schema {table.schema} does not match "
                                f"the file's schema {self._schema}; write tables of one schema")
            if self.format == "ipc":
                self._writer.write_table(table, max_chunksize=self.rows_per_batch)
            else:
                self._writer.write_table(table, row_group_size=self.rows_per_batch)
        except OSError as exc:
            self.abort()
            raise write_error(self._loc.display, exc) from None
        except BaseException:
            self.abort()
            raise
        self.rows_written += table.num_rows

    def close(self) -> None:
        """Finish the file and make it visible under its final name (atomically when local)."""
        if self._done:
            return
        try:
            if self._writer is None:
                if self._schema is None:
                    raise PoolError(f"pool {self.path}: nothing was written and no schema was "
                                    "given; write at least one table")
                self._start(self._schema)
            self._writer.close()
            self._file.commit()
        except OSError as exc:
            self.abort()
            raise write_error(self._loc.display, exc) from None
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._lock.release()
        log.debug("wrote %s (%s, %d rows)", self._loc.display, self.format, self.rows_written)

    def abort(self) -> None:
        """Discard everything written so far (no final file appears)."""
        if self._done:
            return
        self._done = True
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # noqa: S110 -- already failed; the file is being discarded anyway
            pass
        self._file.abort()
        self._lock.release()

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _writer_lock(loc: Location) -> DirLock:
    """The lock of one pool file: ``.NAME.lock`` in its directory (local paths only)."""
    head, name = os.path.split(loc.path)
    where = resolve(head) if loc.is_local else loc
    return DirLock(where, what="pool", name=f".{name}.lock", display=loc.display,
                   busy="wait for it to finish or write another path")


def write_table(table: pa.Table, path: str, *, format: str | None = None,
                rows_per_batch: int = DEFAULT_ROWS_PER_BATCH, lock: bool = True) -> None:
    """Write ``table`` to ``path`` (format from ``format`` or the suffix), atomically when local."""
    with PoolWriter(path, table.schema, format=format, rows_per_batch=rows_per_batch, lock=lock) as w:
        w.write(table)
