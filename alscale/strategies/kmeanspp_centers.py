"""k-means++ / BADGE seeding, coordinator side: what the exact and the k-means‖ seedings share.

The centers held at the coordinator (:class:`Centers`, float64 GEMM form), the start of a
seeding (first center over all shards), one batched sync of new centers to the shards
(:func:`sync`), the keyed random fill of a zero-mass rest (:func:`rest`) and the stats.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies.kmeanspp_kernels import _S_REST, keyed_round, min_sq_dist, prepare_centers
from alscale.strategies.kmeanspp_shard import OP, FirstCenter, Masses, SeedInit
from alscale.strategies.shards import Shards
from alscale.types import Selection

logger = logging.getLogger(__name__)

SPACES = ("badge", "embedding")
#: Weights after the first center are below 4.25 max ‖g‖² (grid and rounding).
FIRST_BOUND = 4.25


@dataclass(frozen=True)
class SeedingStats:
    """What a seeding run cost (for logs and benchmarks)."""

    syncs: int  # batched center updates sent to the shards
    trials: int  # proposals examined (exact) / candidates (k-means‖)
    accepted: int  # picks made by D² sampling (not the first, not a zero-mass rest)
    round_trips: int  # coordinator <-> shards fan-outs
    rounds: int = 0  # k-means‖ oversampling rounds
    exact_rows: int = 0  # rows the float32 filter sent to the exact kernel, all shards


class Centers:
    """Centers in float64 GEMM form (:func:`prepare_centers`) plus their float32 rows; growable."""

    def __init__(self, c: int | None, d: int) -> None:
        self.c, self.d, self.m = c, d, 0
        self.row_ids: list[int] = []
        self.a32: list[np.ndarray] = []
        self.h32: list[np.ndarray] = []
        self.n: list[float] = []
        self._ca = None if c is None else np.empty((16, c))
        self._ch = np.empty((16, d))
        self._cn = np.empty(16)

    def add(self, row_id: int, a: np.ndarray | None, h: np.ndarray, n: float) -> None:
        if self.m == self._ch.shape[0]:
            grow = 2 * self.m
            self._ch = np.resize(self._ch, (grow, self.d))
            self._cn = np.resize(self._cn, grow)
            if self._ca is not None:
                self._ca = np.resize(self._ca, (grow, self.c))
        ca, ch = prepare_centers(None if a is None else a[None, :], h[None, :])
        self._ch[self.m] = ch[0]
        if self._ca is not None:
            self._ca[self.m] = ca[0]
        self._cn[self.m] = n
        self.row_ids.append(int(row_id))
        self.a32.append(a)
        self.h32.append(h)
        self.n.append(float(n))
        self.m += 1

    def extend(self, other: Centers) -> None:
        for i in range(other.m):
            self.add(other.row_ids[i], other.a32[i], other.h32[i], other.n[i])

    def min_dist(self, a_R_C: np.ndarray | None, h_R_D: np.ndarray, n_R: np.ndarray) -> np.ndarray:
        """Exact min distance ``[R]`` of rows to these centers (inf when there are none)."""
        if self.m == 0:
            return np.full(h_R_D.shape[0], np.inf)
        d, _ = min_sq_dist(
            a_R_C, h_R_D, n_R, None if self._ca is None else self._ca[: self.m], self._ch[: self.m], self._cn[: self.m]
        )
        return d

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """(row_ids_M, a_M_C or None, h_M_D, n_M) of the centers (quantized float32)."""
        a = None if self.c is None else np.array(self.a32, dtype=np.float32).reshape(self.m, self.c)
        h = np.array(self.h32, dtype=np.float32).reshape(self.m, self.d)
        return np.array(self.row_ids, dtype=np.int64), a, h, np.array(self.n, dtype=np.float64)

    def clear(self) -> None:
        self.m = 0
        self.row_ids, self.a32, self.h32, self.n = [], [], [], []


def check_space(space: str) -> None:
    if space not in SPACES:
        raise AlscaleError(f"space must be one of {', '.join(SPACES)}; got {short_repr(space)}")


def _first_center(shards: Shards, space: str, seed: int, round: int) -> tuple[int, FirstCenter | None, float]:
    """(candidates, the first center over all shards, the largest ‖g‖²)."""
    infos: list[SeedInit] = shards.call(OP + "kpp_init", space, int(seed), int(round))
    n_cand = sum(i.n for i in infos)
    offers = [i.first for i in infos if i.first is not None]
    if not offers:
        return 0, None, 0.0
    if space == "badge":
        first = min(offers, key=lambda o: (-o.key, o.row_id))
    else:
        first = min(offers, key=lambda o: (o.key, o.row_id))
    dims = {i.dims for i in infos if i.n}
    if len(dims) > 1:
        raise AlscaleError(f"shards disagree on the factor dimensions: {sorted(map(str, dims))}")
    return n_cand, first, max(i.max_n for i in infos)


def filter_ok(filtered: bool, max_n: float) -> bool:
    """Whether the float32 filter may run: float32 must hold every value it forms (|x| <
    2**100 per element already)."""
    return bool(filtered) and max_n < 2.0**100


class Start(NamedTuple):
    """The start of a seeding: candidates, the largest ‖g‖², the picks to make ``k``, whether
    the filter runs, the centers holding the first center, and an empty set of centers."""

    n_cand: int
    max_n: float
    k: int
    filtered: bool
    with_first: Centers
    empty: Centers


def start(shards: Shards, space: str, budget: int, seed: int, round: int, filtered: bool) -> Start | None:
    """Common start of both seedings: the first center and what sizes the loop (None when
    there is no candidate)."""
    n_cand, first, max_n = _first_center(shards, space, seed, round)
    k = min(int(budget), n_cand)
    if k < budget:
        logger.warning("budget %d exceeds the %d unlabelled rows; selecting all of them", budget, n_cand)
    if k == 0 or first is None:
        return None
    c_dim = None if first.a_C is None else first.a_C.shape[0]
    with_first, empty = Centers(c_dim, first.h_D.shape[0]), Centers(c_dim, first.h_D.shape[0])
    with_first.add(first.row_id, first.a_C, first.h_D, first.n)
    return Start(n_cand, max_n, k, filter_ok(filtered, max_n), with_first, empty)


class Synced(NamedTuple):
    """One sync over all shards: each shard's integer mass, the largest weight, the rows each
    center last lowered (when asked) and the exact-kernel rows so far."""

    masses: list[int]
    max_u: float
    counts_M: np.ndarray | None
    exact_rows: int


def sync(shards: Shards, centers: Centers, e: int, filtered: bool, want_counts: bool = False) -> Synced:
    """Send ``centers`` to every shard (one fan-out); the shards' prefix sums at ``2^e``."""
    row_ids, a, h, n = centers.arrays()
    res: list[Masses] = shards.call(OP + "kpp_sync", row_ids, a, h, n, int(e), bool(filtered), bool(want_counts))
    counts = np.sum([r.counts_M for r in res], axis=0) if want_counts else None
    return Synced([int(r.mass) for r in res], max(r.max_u for r in res), counts, sum(int(r.exact_rows) for r in res))


def rest(shards: Shards, k: int, seed: int, round: int, chosen: Sequence[int]) -> np.ndarray:
    """The ``k`` candidates not in ``chosen`` (the synced centers) in keyed random order (the
    smallest keyed uniforms first): the fill when no D² mass is left."""
    fill = shards.random_fill(int(k), int(seed), keyed_round(round, _S_REST), np.asarray(chosen, np.int64),
                              smallest=True)
    return fill.row_ids_K.astype(np.int64)


def selection(picks: Sequence[int], scores: Sequence[float], name: str) -> Selection:
    return Selection(
        indices_B=np.array(picks, dtype=np.int64), scores_B=np.array(scores, dtype=np.float64), strategy=name
    )
