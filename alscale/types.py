"""Small immutable records passed between the layers (no arrays of pool size here).

Shape suffixes: N pool rows, K MC samples / committee members, C classes, D dims, B budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ShardSpec:
    """A contiguous row range ``[start, stop)`` of the pool at ``pool`` (path or URI).

    Concatenating the shards of a plan in ``index`` order gives the pool in order.
    A worker needs nothing but this to (re)load its shard.
    """

    pool: str
    index: int
    start: int
    stop: int

    @property
    def n_rows(self) -> int:
        return self.stop - self.start


@dataclass
class ShardData:
    """Columns of one shard as numpy arrays (zero-copy views where the format allows).

    ``log_probs_N_K_C`` always has a K axis: a pool column of type list<float>[C] is
    read as K = 1.
    """

    row_ids_N: np.ndarray
    features_N_D: np.ndarray | None = None
    log_probs_N_K_C: np.ndarray | None = None
    embeddings_N_D: np.ndarray | None = None
    labels_N: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return int(self.row_ids_N.shape[0])


@dataclass(frozen=True)
class Selection:
    """A selected batch, in pick order.

    ``indices_B`` are positions in the arrays given to the in-memory API, or pool
    ``row_id`` values when produced by a job (then ``row_ids_B`` is the same array).
    ``scores_B[i]`` is the acquisition score of the i-th pick (higher = picked first).
    ``provenance`` (optional): further per-pick columns ``name -> [B]`` written to
    ``selection.parquet`` beside the standard ones (a composed selection's filter, score
    components, group, distance at pick time); ``info``: what the manifest records of how
    the batch was made.
    """

    indices_B: np.ndarray
    scores_B: np.ndarray
    strategy: str
    provenance: Mapping[str, np.ndarray] | None = None
    info: Mapping[str, Any] | None = None

    @property
    def indices(self) -> np.ndarray:
        return self.indices_B

    @property
    def scores(self) -> np.ndarray:
        return self.scores_B

    def __len__(self) -> int:
        return int(self.indices_B.shape[0])


@dataclass
class PhaseTimings:
    """Wall seconds per phase of a job, in the order they ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + float(seconds)

    @property
    def total(self) -> float:
        return float(sum(self.seconds.values()))
