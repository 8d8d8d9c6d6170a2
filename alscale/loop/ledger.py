"""The labelled ledger: which rows are labelled, with what label, in which round, from where.

DESIGN §4: append-only, never edited in place. A ledger is a directory of Parquet files,
one per append (``round-00003.parquet``: columns ``row_id`` int64, ``label`` int64,
``round`` int32, ``source`` string). An append holds the directory's lock
(:class:`alscale.fsio.DirLock`, waiting briefly for another writer), reads the rounds other
writers appended since the ledger was opened (so the checks below see them), and writes through
:class:`alscale.fsio.AtomicFile` with ``replace=False``: a temporary file, fsync'd and
hard-linked to its final name, which fails if the name exists, so an existing file is never
replaced or reopened for writing; a crash leaves at most a stray temporary file, which
readers ignore. A row is labelled at most once (checked on every append and on open).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alscale.errors import AlscaleError
from alscale.fsio import AtomicFile, DirLock, write_error

_NAME = re.compile(r"^round-(\d{5})\.parquet$")
#: Seconds an append waits for another writer's append to finish.
LOCK_WAIT_S = 30.0
SCHEMA = pa.schema([("row_id", pa.int64()), ("label", pa.int64()), ("round", pa.int32()), ("source", pa.string())])


class Ledger:
    """An append-only labelled set in directory ``path`` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(f"ledger {self.path}", exc) from None
        self._row_ids: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._rounds: list[int] = []
        self._seen: set[str] = set()
        self._refresh()

    def _refresh(self) -> None:
        """Read the round files not read yet (all of them on open; another writer's since)."""
        for round_, file in self._files():
            if file.name in self._seen:
                continue
            table = pq.read_table(file)
            if table.schema.remove_metadata() != SCHEMA:
                raise AlscaleError(f"ledger file {file} has schema {table.schema}, expected {SCHEMA}; "
                                   "it was not written by alscale")
            self._add(table["row_id"].to_numpy(), table["label"].to_numpy(), round_, str(file))
            self._seen.add(file.name)

    def _files(self) -> list[tuple[int, Path]]:
        return sorted((int(m.group(1)), self.path / name) for name in os.listdir(self.path)
                      if (m := _NAME.match(name)))

    def _add(self, row_ids: np.ndarray, labels: np.ndarray, round_: int, where: str) -> None:
        if self._rounds and round_ <= self._rounds[-1]:
            raise AlscaleError(f"ledger {self.path}: round {round_} appended after round {self._rounds[-1]}; "
                               "rounds only grow")
        if np.unique(row_ids).size != row_ids.size:
            raise AlscaleError(f"ledger {where}: the same row_id appears twice in one append")
        already = np.intersect1d(self.row_ids, row_ids)
        if already.size:
            raise AlscaleError(f"ledger {where}: row_id {int(already[0])} is already labelled; "
                               "a row is labelled once")
        self._row_ids.append(row_ids.astype(np.int64, copy=False))
        self._labels.append(labels.astype(np.int64, copy=False))
        self._rounds.append(round_)

    @property
    def row_ids(self) -> np.ndarray:
        """Every labelled row_id, in append order (int64)."""
        return np.concatenate(self._row_ids) if self._row_ids else np.empty(0, np.int64)

    @property
    def labels(self) -> np.ndarray:
        """Their labels, aligned with :attr:`row_ids`."""
        return np.concatenate(self._labels) if self._labels else np.empty(0, np.int64)

    @property
    def rounds(self) -> list[int]:
        return list(self._rounds)

    def __len__(self) -> int:
        return int(sum(ids.size for ids in self._row_ids))

    def append(self, row_ids: np.ndarray, labels: np.ndarray, round_: int, source: str) -> Path:
        """Add one round's labels as a new file; returns its path. Nothing is written on error."""
        row_ids = np.asarray(row_ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if row_ids.shape != labels.shape or row_ids.ndim != 1:
            raise AlscaleError(f"ledger append: {row_ids.shape[0]} row_ids but labels of shape {labels.shape}")
        final = self.path / f"round-{round_:05d}.parquet"
        table = pa.table({"row_id": row_ids, "label": labels,
                          "round": np.full(row_ids.size, round_, np.int32),
                          "source": pa.array([source] * row_ids.size, pa.string())}, schema=SCHEMA)
        with DirLock(self.path, what="ledger", wait_s=LOCK_WAIT_S,
                     busy="another process is appending to it; try again"):
            if final.exists() and final.name not in self._seen:  # another writer's round: never replaced
                raise FileExistsError(errno.EEXIST, "ledger round file exists; a round is appended once", str(final))
            self._refresh()  # what other writers appended since: the checks below see it
            self._add(row_ids, labels, round_, str(final))  # validates before writing
            try:
                with AtomicFile(final, replace=False) as out:
                    pq.write_table(table, out.open())
            except BaseException:
                self._row_ids.pop(), self._labels.pop(), self._rounds.pop()
                raise
            self._seen.add(final.name)
        return final
