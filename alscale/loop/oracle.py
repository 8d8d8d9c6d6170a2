"""Oracles: whoever answers "what is the label of these rows?".

The loop talks to an :class:`Oracle`; :class:`SimulatedOracle` reveals the pool's
``label`` column (benchmarks and reproductions of published curves). Human and command
oracles (issue 10) implement the same protocol.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from alscale.errors import AlscaleError


class Oracle(Protocol):
    name: str

    def label(self, row_ids_B: np.ndarray) -> np.ndarray:
        """Labels (int64 ``[B]``) of ``row_ids_B``, in the same order."""
        ...


class SimulatedOracle:
    """Answers from known labels (a pool's ``label`` column)."""

    name = "simulated"

    def __init__(self, row_ids_N: np.ndarray, labels_N: np.ndarray, *, source: str = "pool") -> None:
        row_ids_N = np.asarray(row_ids_N, dtype=np.int64)
        labels_N = np.asarray(labels_N, dtype=np.int64)
        if row_ids_N.shape != labels_N.shape:
            raise AlscaleError(f"simulated oracle: {row_ids_N.size} row_ids but {labels_N.size} labels")
        self._order = np.argsort(row_ids_N, kind="stable")
        self._sorted_ids = row_ids_N[self._order]
        self._labels = labels_N
        self.source = source
        self.queries = 0

    def label(self, row_ids_B: np.ndarray) -> np.ndarray:
        row_ids_B = np.asarray(row_ids_B, dtype=np.int64)
        pos = np.searchsorted(self._sorted_ids, row_ids_B)
        pos = np.minimum(pos, self._sorted_ids.size - 1)
        missing = self._sorted_ids[pos] != row_ids_B if self._sorted_ids.size else np.ones(row_ids_B.size, bool)
        if missing.any():
            raise AlscaleError(f"simulated oracle ({self.source}) has no label for row_id "
                               f"{int(row_ids_B[np.argmax(missing)])}")
        self.queries += int(row_ids_B.size)
        return self._labels[self._order[pos]]
