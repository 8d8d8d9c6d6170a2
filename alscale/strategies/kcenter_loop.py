"""k-center greedy, coordinator side: the exact greedy loop over the shards' offers.

:func:`greedy` runs the certified rounds of :mod:`alscale.strategies.kcenter` (the module
docstring there says why the picks are exact): each round trip sends the centers picked
since the last round and takes every shard's :class:`~alscale.strategies.kcenter_shard.Offer`;
the coordinator then keeps picking the farthest offered row while it can prove it is the
global greedy pick. The steps are small functions over one :class:`_Run`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from alscale.index import NumpyBackend, norm_upper_bound
from alscale.index.exact import canonical_min_sq_dist, combine_exact_sums, sq_dist_rows, sq_dist_to_point
from alscale.strategies import progress
from alscale.strategies.kcenter_shard import OP, KCenterInit
from alscale.strategies.shards import Shards

logger = logging.getLogger(__name__)

#: Largest message of centers (labelled rows) sent or taken in one round trip.
CHUNK_BYTES = 64 << 20
#: Upper limit on the rows one shard offers per round.
MAX_OFFER = 1 << 16
_INIT, _SYNC, _NEAR = OP + "init", OP + "sync", OP + "near_point"


@dataclass
class KCenterStats:
    """What one k-center run did (for logs and benchmarks)."""

    mode: str
    backend: str
    rounds: int = 0  # rounds of offers (each one round trip)
    picks_per_round: list[int] = field(default_factory=list)
    offered: int = 0  # rows offered over all rounds
    pairs: int = 0  # row-center distances computed on the shards (eager: rows x centers)
    round_trips: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class KCenterResult:
    """Picks in order (``row_ids_B``), their distance at pick time (``scores_B``), and stats."""

    row_ids_B: np.ndarray
    scores_B: np.ndarray
    stats: KCenterStats


class _Candidates:
    """The offered rows at the coordinator, with exact (canonical) squared min-distances."""

    def __init__(self, dim: int) -> None:
        self.ids = np.empty(0, np.int64)
        self.emb = np.empty((0, dim), np.float32)
        self.sq = np.empty(0, np.float32)
        self.val = np.empty(0, np.float64)
        self.eps = 0.0

    def replace(self, ids: np.ndarray, emb: np.ndarray, centers: list[np.ndarray]) -> None:
        """New candidate set; exact values reused for rows already held, computed for the rest."""
        val = np.full(ids.shape[0], np.inf, dtype=np.float64)
        known = np.isin(ids, self.ids)
        if known.any():
            order = np.argsort(self.ids, kind="stable")
            at = order[np.searchsorted(self.ids[order], ids[known])]
            val[known] = self.val[at]
        fresh = np.flatnonzero(~known)
        if fresh.size:
            for c in centers:
                if c.shape[0]:
                    val[fresh] = np.minimum(val[fresh], canonical_min_sq_dist(emb[fresh], c))
        self.ids, self.val = ids, val
        self.emb = np.ascontiguousarray(emb, dtype=np.float32)
        self.sq = np.einsum("ij,ij->i", self.emb, self.emb)
        norm = norm_upper_bound(float(self.sq.max()), self.emb.shape[1]) if self.sq.size else 0.0
        self.eps = NumpyBackend().error_bound(norm, norm, self.emb.shape[1])

    def best(self) -> int:
        """Position of the live candidate with the largest value (ties: lower row_id); -1 if none."""
        if self.val.size == 0:
            return -1
        top = self.val.max()
        if top == -np.inf:
            return -1
        tied = np.flatnonzero(self.val == top)
        return int(tied[np.argmin(self.ids[tied])]) if tied.size > 1 else int(tied[0])

    def take(self, j: int) -> None:
        """Pick candidate ``j``: it leaves the set and becomes a center.

        A float32 product finds the rows the new center may bring closer (approximate
        distance within ``eps`` of their value); only those get the canonical distance.
        """
        self.val[j] = -np.inf
        c = self.emb[j]
        approx = self.sq - 2.0 * (self.emb @ c) + self.sq[j]
        maybe = np.flatnonzero(approx <= self.val + self.eps)
        if maybe.size:
            self.val[maybe] = np.minimum(self.val[maybe], sq_dist_rows(self.emb[maybe], c))



@dataclass
class _Picks:
    """The picks so far: ids, distances at pick time, and embeddings ``emb_K_D`` (first rows)."""

    ids: list[int]
    scores: list[float]
    emb_K_D: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, row_id: int, score: float, emb_D: np.ndarray) -> np.ndarray:
        """Record a pick; returns its embedding as a ``[1, D]`` view (a new center)."""
        n = len(self.ids)
        self.emb_K_D[n] = emb_D
        self.ids.append(int(row_id))
        self.scores.append(float(score))
        return self.emb_K_D[n:n + 1]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.ids, dtype=np.int64), np.asarray(self.scores, dtype=np.float64)


@dataclass
class _Run:
    """One greedy run at the coordinator: the fixed initial centers, the picks, the centers
    not yet sent to the shards, and each shard's offer size."""

    shards: Shards
    k: int
    dim: int
    center_sets: list[np.ndarray]
    picks: _Picks
    stats: KCenterStats
    offer_rows: int | None
    m_s: list[int] = field(default_factory=list)
    pending_c: list[np.ndarray] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)


def mean_first_pick(shards: Shards, infos: list[KCenterInit], n_cand: int) -> tuple[int, np.ndarray]:
    """The candidate nearest to the exact mean of all candidates' embeddings (ties: lower row_id)."""
    mean_D = combine_exact_sums([i.sums_D for i in infos if i.sums_D is not None]) / float(n_cand)
    near = shards.call(_NEAR, mean_D)
    ids = np.concatenate([n.row_ids_R for n in near])
    emb = np.concatenate([n.embeddings_R_D for n in near])
    d = sq_dist_to_point(emb, mean_D)
    tied = np.flatnonzero(d == d.min())
    j = int(tied[np.argmin(ids[tied])])
    return int(ids[j]), emb[j]


def labeled_centers(shards: Shards, infos: list[KCenterInit], page: int, dim: int) -> np.ndarray:
    """Every labelled row's embedding in row_id order: the first page came with ``init``, the
    rest comes page by page through the generic ``take``."""
    ids_parts = [i.labeled_first.row_ids_R for i in infos]
    emb_parts = [i.labeled_first.embeddings_R_D for i in infos]
    start = page
    while any(i.labeled > start for i in infos):
        got = shards.take(None, ("embeddings",), where="labeled", page=(start, page))
        ids_parts += [g.row_ids_R for g in got]
        emb_parts += [g.embeddings_R_D for g in got]
        start += page
    ids = np.concatenate(ids_parts) if ids_parts else np.empty(0, np.int64)
    emb = np.concatenate(emb_parts) if emb_parts else np.empty((0, dim), np.float32)
    return emb[np.argsort(ids, kind="stable")]


def center_page(shards: Shards) -> int:
    """Labelled rows per shard per message (D <= 1024)."""
    return max(1, CHUNK_BYTES // max(1, shards.n_shards * 4 * 1024))


def _target_per_round(k: int) -> int:
    """Picks one round should certify: a quarter of the budget (about 5 round trips in all;
    a larger offer costs the coordinator little: exact values for a few thousand rows)."""
    return max(16, math.ceil(k / 4))


def _initial_offer(k: int, n_cand_s: list[int], offer_rows: int | None) -> list[int]:
    base = offer_rows if offer_rows is not None else math.ceil(1.25 * _target_per_round(k) / len(n_cand_s)) + 16
    return [min(base, max(1, c), MAX_OFFER) for c in n_cand_s]


def _adapt_offer(m_s: list[int], bounds: np.ndarray, stop_value: float, got: int, k: int,
                 offer_rows: int | None) -> list[int]:
    """More rows from the shards whose bound stopped the round (when it certified too few).

    A fixed ``offer_rows`` is kept, except that a round with no pick doubles the blocking
    shards' offers (otherwise the loop could not progress).
    """
    target = _target_per_round(k)
    out = []
    for m, b in zip(m_s, bounds, strict=True):
        if b > -np.inf and b >= stop_value:
            if got == 0:
                m = 2 * m
            elif offer_rows is None and got < target:
                m = math.ceil(m * min(4.0, max(1.25, target / got)))
        out.append(int(min(MAX_OFFER, max(1, m))))
    return out



def greedy(
    shards: Shards,
    k: int,
    *,
    backend: str,
    centers0: np.ndarray | None,
    take_labeled: bool,
    offer_rows: int | None,
    stats: KCenterStats,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact greedy loop over ``shards``: ``k`` picks (row_ids_k, scores_k).

    Labelled rows are excluded in the shards (``labeled_N``) and, with ``take_labeled``,
    are initial centers; ``centers0`` are further initial centers. With no initial center
    the first pick is the candidate nearest to the exact mean of the candidates.
    """
    t0 = time.perf_counter()
    run = _start(shards, k, backend, device, centers0, take_labeled, offer_rows, stats)
    if run is None:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    stats.seconds["init"] = time.perf_counter() - t0
    cands = _Candidates(run.dim)
    t_round = t_pick = 0.0
    while len(run.picks) < run.k:
        ts = time.perf_counter()
        bounds = _offer_round(run, cands)
        tp = time.perf_counter()
        got, stop_value = _certified_picks(run, cands, float(bounds.max()))
        t_round, t_pick = t_round + tp - ts, t_pick + time.perf_counter() - tp
        if len(run.picks) < run.k:
            run.m_s = _adapt_offer(run.m_s, bounds, stop_value, got, run.k, offer_rows)
    stats.seconds["rounds"] = t_round
    stats.seconds["picks"] = t_pick
    logger.debug("kcenter: %d rounds, picks per round %s", stats.rounds, stats.picks_per_round)
    return run.picks.arrays()


def _start(shards: Shards, k: int, backend: str, device: str | None, centers0: np.ndarray | None,
           take_labeled: bool, offer_rows: int | None, stats: KCenterStats) -> _Run | None:
    """Build the shards' state, collect the initial centers (or make the first pick from the
    mean) and size the first offers; None when there is nothing to pick."""
    page = center_page(shards)
    want_mean = not take_labeled and (centers0 is None or centers0.shape[0] == 0)
    infos: list[KCenterInit] = shards.call(_INIT, backend, device, take_labeled or want_mean,
                                           page if take_labeled else 0)
    dim = int(infos[0].dim)
    n_cand_s = [int(i.candidates) for i in infos]
    stats.backend = str(infos[0].backend)
    center_sets: list[np.ndarray] = []
    if centers0 is not None and centers0.shape[0]:
        center_sets.append(np.ascontiguousarray(centers0, dtype=np.float32))
    if take_labeled and any(i.labeled for i in infos):
        center_sets.append(labeled_centers(shards, infos, page, dim))
    k = min(k, sum(n_cand_s))
    if k <= 0:
        return None
    run = _Run(shards, k, dim, center_sets, _Picks([], [], np.empty((k, dim), dtype=np.float32)), stats, offer_rows)
    if center_sets:
        _send_initial_centers(run)
    else:
        row, emb = mean_first_pick(shards, infos, sum(n_cand_s))
        run.pending_c.append(run.picks.add(row, math.inf, emb).copy())
        run.pending_ids.append(row)
        progress.advance()
    run.m_s = _initial_offer(k, n_cand_s, offer_rows)
    return run


def _send_initial_centers(run: _Run) -> None:
    """Initial centers go out with the first round; a bigger set first in several messages."""
    c0 = np.concatenate(run.center_sets) if len(run.center_sets) > 1 else run.center_sets[0]
    chunk = max(1, CHUNK_BYTES // max(1, run.dim * 4))
    cut = ((c0.shape[0] - 1) // chunk) * chunk
    for a in range(0, cut, chunk):
        run.shards.call(_SYNC, c0[a:a + chunk], np.empty(0, np.int64), 0)
    run.pending_c.append(c0[cut:])


def _offer_round(run: _Run, cands: _Candidates) -> np.ndarray:
    """One round trip: the new centers out, every shard's offer back; the offered rows become
    the candidates. Returns each shard's bound on the rows it did not offer."""
    if run.pending_c:
        centers = np.concatenate(run.pending_c) if len(run.pending_c) > 1 else run.pending_c[0]
    else:
        centers = np.empty((0, run.dim), np.float32)
    done_ids = np.asarray(run.pending_ids, dtype=np.int64)
    offers = run.shards.call_each(_SYNC, [(centers, done_ids, m) for m in run.m_s])
    run.pending_c, run.pending_ids = [], []
    stats = run.stats
    stats.rounds += 1
    ids = np.concatenate([o.row_ids_M for o in offers])
    stats.offered += int(ids.shape[0])
    stats.pairs = int(sum(o.pairs for o in offers))
    cands.replace(ids, np.concatenate([o.embeddings_M_D for o in offers]),
                  [*run.center_sets, run.picks.emb_K_D[:len(run.picks)]])
    return np.array([o.bound for o in offers], dtype=np.float64)


def _certified_picks(run: _Run, cands: _Candidates, bound: float) -> tuple[int, float]:
    """Pick the farthest offered row while it is certified (farther than every shard's bound);
    returns the picks made and the value that stopped the round (-inf: none did)."""
    got, stop_value = 0, -np.inf
    while len(run.picks) < run.k:
        j = cands.best()
        if j < 0:
            break
        v = float(cands.val[j])
        if not v > bound:  # an unsent row might be as far: not certified
            stop_value = v
            break
        row = int(cands.ids[j])
        run.pending_c.append(run.picks.add(row, math.sqrt(v), cands.emb[j]))
        run.pending_ids.append(row)
        cands.take(j)
        got += 1
    run.stats.picks_per_round.append(got)
    progress.advance(got)
    return got, stop_value
