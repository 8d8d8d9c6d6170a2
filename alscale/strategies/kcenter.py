"""k-center greedy (Core-Set): exact over the whole pool, sharded, with certified batches.

The textbook greedy (Gonzalez, TCS 1985; the Core-Set acquisition of Sener & Savarese,
ICLR 2018): the min-distance of every row to the *centers* starts from the labelled rows
(with none, the first pick is the row nearest to the pool's mean embedding); then
repeatedly the row farthest from all centers is picked and becomes a center. Ties go to the
lower ``row_id``; each pick's score is its distance (Euclidean, not squared) at pick time
(``inf`` for a first pick made from the mean).

**Exactness.** Picks are decided with the canonical float64 distance of
:mod:`alscale.index.exact` (a function of the two vectors only), never with a fast
backend's value: the selection is the same for every backend, shard count, executor and
machine, bit for bit. Fast backends (:mod:`alscale.index`) do the bulk work on the shards;
their values are used as bounds, ``|approx − exact| <= eps`` (a rigorous float32 error
bound).

**Sharded loop (DESIGN §3).** Each shard keeps ``mind`` (approximate squared min-distance
of each row to the centers it has been compared with). One round trip per *round*: the
coordinator sends the centers picked since the last round, and every shard answers with
its top-``m`` rows by ``mind`` (with their embeddings) and a bound ``u`` on every row it
did not send. The coordinator then picks greedily among the offered rows, keeping their
exact min-distances up to date against its own new centers. Because min-distances only
shrink, no unsent row can exceed its shard's ``u``; a pick whose exact value is strictly
larger than every shard's ``u`` is therefore the global greedy pick (certified). When the
best remaining offered row cannot be certified, the round ends. ``m`` adapts per shard to
the number of picks a round certified (about 5 rounds per 1,000 picks).

**Lazy updates on the shards.** A stale ``mind`` is still an upper bound, so a shard
compares rows with new centers only as far as its offer needs: in decreasing order of
``mind``, block of centers by block, dropping a row as soon as its value falls below the
``(m+1)``-th largest up-to-date value. Rows far inside the covered region are never
touched again. At N = 1M, B = 1,000 this computes ~5e6 row-center distances instead of the
1e9 of an eager update (every row against every center), with the same picks.

**Gather mode.** When all embeddings fit ``gather_bytes`` and the coordinator has a GPU,
the rows are gathered once and the same loop runs on one device in-process; the result is
identical by construction.

**Approximate mode** (``kcenter_approx``, Malkomes et al., NeurIPS 2015): greedy with the
full budget on every shard independently (one round trip), then greedy on the union of
the shards' picks; a constant-factor approximation of the k-center objective whose
coverage radius ``benchmarks/selection.py`` reports against the exact one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.index import BACKENDS, NumpyBackend, get_backend, norm_upper_bound
from alscale.index.exact import (
    canonical_min_sq_dist,
    combine_exact_sums,
    exact_column_sums,
    sq_dist_rows,
    sq_dist_to_point,
)
from alscale.strategies import progress
from alscale.strategies.shards import FanoutShards, InProcessFanout, Shards, ShardState, shard_op, topk_order
from alscale.types import Selection
from alscale.strategies import spec as _spec

logger = logging.getLogger(__name__)

_OP = "alscale.strategies.kcenter."
MODES = ("auto", "sharded", "gather")
#: Largest message of centers (labelled rows) sent or taken in one round trip.
CHUNK_BYTES = 64 << 20
#: Upper limit on the rows one shard offers per round.
MAX_OFFER = 1 << 16


# =====================================================================================
# Options
# =====================================================================================


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Range checks for ``kcenter`` / ``kcenter_approx`` options (registry ``check_fn``)."""
    out = dict(options)
    backend = out.get("backend", "auto")
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise AlscaleError(f"option backend must be one of {', '.join(BACKENDS)}; got {short_repr(backend)}")
    out["backend"] = backend.lower()
    if "mode" in out:
        mode = out["mode"]
        if not isinstance(mode, str) or mode.lower() not in MODES:
            raise AlscaleError(f"option mode must be one of {', '.join(MODES)}; got {short_repr(mode)}")
        out["mode"] = mode.lower()
    if "gather_bytes" in out:
        gb = out["gather_bytes"]
        if isinstance(gb, bool) or not isinstance(gb, (int, np.integer)) or gb < 0:
            raise AlscaleError(f"option gather_bytes must be a non-negative integer (bytes); got {short_repr(gb)}")
        out["gather_bytes"] = int(gb)
    if "offer_rows" in out and out["offer_rows"] is not None:
        m = out["offer_rows"]
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= MAX_OFFER:
            raise AlscaleError(
                f"option offer_rows must be null (adaptive) or an integer in [1, {MAX_OFFER}]; got {short_repr(m)}"
            )
        out["offer_rows"] = int(m)
    return out


# =====================================================================================
# Shard side: state and shard ops
# =====================================================================================


class _ShardKC:
    """One shard's k-center state (kept in ``ShardState.strategy_state["kcenter"]``).

    ``mind[i]`` is an approximate squared min-distance of row i to the centers
    ``C[:seen[i]]`` it has been compared with (``+inf`` before any, ``-inf`` for rows that
    are labelled or picked). Min-distances only shrink, so ``mind[i] + eps`` bounds row i's
    exact value from above however stale it is; rows are brought up to date lazily
    (:meth:`refresh`), in decreasing order of ``mind``, only as far as the offers need.
    """

    #: Rows per matrix product when catching rows up (bounds the gathered copy).
    CHUNK_ROWS = 1 << 16
    #: Every row is first compared with this many centers only (the first ones, e.g. the
    #: first labelled rows): enough for a finite upper bound; the rest is applied lazily.
    FIRST_CENTERS = 64
    #: Centers are applied in blocks of this many; a row stops taking blocks as soon as its
    #: value falls below the offer threshold.
    BLOCK_CENTERS = 256

    def __init__(self, state: ShardState, backend: str, device: str | None) -> None:
        emb = state.embeddings_N_D
        if emb is None:
            raise AlscaleError(
                "strategy kcenter needs embeddings, but this shard has none: give the pool an 'embedding' "
                "column or use a model that returns (logits, embedding)"
            )
        self.be = get_backend(backend, device)
        self.x_np = np.ascontiguousarray(emb, dtype=np.float32)  # offers are cut from this
        self.x = self.be.asarray(self.x_np)
        self.x_sq = self.be.sq_norms(self.x)
        self.row_ids = state.row_ids_N
        self.n = int(self.x_np.shape[0])
        self.dim = int(self.x_np.shape[1])
        self.mind = np.full(self.n, np.inf, dtype=np.float32)
        self.mind[~state.candidates_N] = -np.inf  # labelled (and filtered-out) rows are never picked
        self.seen = np.zeros(self.n, dtype=np.int64)
        self.blocks: list[Any] = []  # centers, one native array per message
        self.starts: list[int] = []  # index of each block's first center
        self._block_of: dict[int, int] = {}  # block start -> block index
        self.n_centers = 0
        self._since: dict[tuple[int, int], Any] = {}
        x_sq = self.be.to_numpy(self.x_sq)
        self.x_norm_max = norm_upper_bound(float(x_sq.max()), self.dim) if x_sq.size else 0.0
        self.c_norm_max = 0.0
        self.processed = 0  # row-center pairs computed (work counter, for stats)
        ids = self.row_ids
        self._sorted = bool(ids.size < 2 or np.all(ids[1:] > ids[:-1]))
        self._order = None if self._sorted else np.argsort(ids, kind="stable")

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Local positions of those ``row_ids`` that live in this shard."""
        ids = self.row_ids
        if row_ids.size == 0 or ids.size == 0:
            return np.empty(0, dtype=np.int64)
        sorted_ids = ids if self._sorted else ids[self._order]
        at = np.searchsorted(sorted_ids, row_ids)
        at = np.minimum(at, ids.size - 1)
        hit = sorted_ids[at] == row_ids
        pos = at[hit]
        return pos if self._sorted else self._order[pos]

    def eps(self) -> float:
        return self.be.error_bound(self.x_norm_max, self.c_norm_max, self.dim)

    def add_centers(self, centers_M_D: np.ndarray) -> None:
        c64 = centers_M_D.astype(np.float64)
        self.c_norm_max = max(self.c_norm_max, float(np.sqrt(np.einsum("ij,ij->i", c64, c64).max())) * (1 + 1e-6))
        m = centers_M_D.shape[0]
        cuts = [0, min(m, self.FIRST_CENTERS)] if self.n_centers == 0 else [0]
        cuts += list(range(cuts[-1] + self.BLOCK_CENTERS, m, self.BLOCK_CENTERS)) + [m]
        for a, b in zip(cuts[:-1], cuts[1:]):
            if b > a:
                self.blocks.append(self.be.asarray(centers_M_D[a:b]))
                self.starts.append(self.n_centers)
                self._block_of[self.n_centers] = len(self.blocks) - 1
                self.n_centers += b - a
        self._since.clear()

    def _next_boundary(self, start: int) -> int:
        b = self._block_of[start] + 1
        return self.starts[b] if b < len(self.starts) else self.n_centers

    def _centers_range(self, start: int, stop: int) -> Any:
        """Centers ``C[start:stop]`` (both block boundaries) as one native array."""
        if (start, stop) not in self._since:
            parts = self.blocks[self._block_of[start] : self._block_of[stop] if stop < self.n_centers
                                else len(self.blocks)]
            if len(parts) == 1:
                self._since[(start, stop)] = parts[0]
            elif isinstance(parts[0], np.ndarray):
                self._since[(start, stop)] = np.concatenate(parts)
            else:
                import torch

                self._since[(start, stop)] = torch.cat(parts)
        return self._since[(start, stop)]

    def _take_rows(self, idx: np.ndarray) -> tuple[Any, Any]:
        if isinstance(self.x, np.ndarray):
            return self.x[idx], self.x_sq[idx]
        import torch

        t = torch.as_tensor(idx, device=self.x.device)
        return self.x[t], self.x_sq[t]

    def _process(self, idx: np.ndarray, upto: int | None = None) -> None:
        """Compare rows ``idx`` with the centers they have not seen, up to ``C[:upto]``
        (default: all), one matrix product per group of rows that saw the same centers."""
        upto = self.n_centers if upto is None else upto
        seen = self.seen[idx]
        for s in np.unique(seen):
            if s >= upto:
                continue
            group = idx[seen == s]
            centers = self._centers_range(int(s), upto)
            if group.size > self.n // 2:  # most rows: contiguous slices, no gathered copies
                for a in range(0, self.n, self.CHUNK_ROWS):
                    b = min(self.n, a + self.CHUNK_ROWS)
                    self.mind[a:b] = self.be.to_numpy(self.be.min_sq_dist_update(
                        self.x[a:b], centers, self.mind[a:b], x_sq_N=self.x_sq[a:b]))
                self.processed += self.n * (upto - int(s))
                # Rows that had seen C[:s] or more have now seen C[:upto] (re-comparing with a
                # center changes nothing: min is idempotent).
                self.seen[(self.seen >= s) & (self.seen < upto)] = upto
                continue
            for a in range(0, group.size, self.CHUNK_ROWS):
                rows = group[a : a + self.CHUNK_ROWS]
                xb, sqb = self._take_rows(rows)
                vals = self.be.min_sq_dist_update(xb, centers, self.mind[rows], x_sq_N=sqb)
                self.mind[rows] = self.be.to_numpy(vals)
            self.processed += group.size * (upto - int(s))
            self.seen[group] = upto

    def _advance(self, rows: np.ndarray) -> None:
        """Compare each of ``rows`` with the next block of centers it has not seen."""
        seen = self.seen[rows]
        for s in np.unique(seen):
            self._process(rows[seen == s], upto=self._next_boundary(int(s)))

    def _threshold(self, m: int) -> tuple[np.ndarray, float]:
        """Up-to-date live rows and the ``(m+1)``-th largest value among them (-inf if <= m)."""
        fresh = np.flatnonzero((self.seen == self.n_centers) & (self.mind > -np.inf))
        if fresh.size <= m:
            return fresh, -np.inf
        return fresh, float(np.partition(self.mind[fresh], fresh.size - m - 1)[fresh.size - m - 1])

    def refresh(self, m: int) -> tuple[np.ndarray, float]:
        """Update rows lazily until the top ``m`` are certainly the shard's top ``m``.

        Rows are caught up in decreasing order of their (stale) ``mind``, block of centers
        by block, and a row stops as soon as its value falls below the ``(m+1)``-th largest
        up-to-date value (it cannot be offered). It stops when that value is at least every
        stale value. Returns (positions of the top ``m`` up-to-date rows in offer order,
        the bound on every other row: the largest value not offered + eps).
        """
        mind = self.mind
        never = np.flatnonzero(mind == np.inf)
        if never.size:  # a finite upper bound for every row: the first centers only
            self._process(never, upto=self.starts[1] if len(self.starts) > 1 else self.n_centers)
        tier = max(4 * (m + 1), 2048)
        while True:
            fresh_idx, theta = self._threshold(m)
            stale_idx = np.flatnonzero((self.seen < self.n_centers) & (mind > -np.inf))
            top_stale = float(mind[stale_idx].max()) if stale_idx.size else -np.inf
            if stale_idx.size == 0 or (fresh_idx.size > m and theta >= top_stale):
                break
            rows = stale_idx
            if rows.size > tier:
                rows = rows[np.argpartition(-mind[rows], tier - 1)[:tier]]
            while rows.size:
                self._advance(rows)
                rows = rows[self.seen[rows] < self.n_centers]
                if rows.size:
                    theta = self._threshold(m)[1]
                    rows = rows[mind[rows] >= theta]
            tier *= 4
        order = fresh_idx[topk_order(mind[fresh_idx], self.row_ids[fresh_idx], m + 1)]
        bound_value = max(theta, top_stale)
        bound = bound_value + self.eps() if bound_value > -np.inf else -np.inf
        return order[:m], bound


def _kc(state: ShardState) -> _ShardKC:
    kc = state.strategy_state.get("kcenter")
    if kc is None:
        raise RuntimeError("kcenter shard state missing: run the init op first")
    return kc


@shard_op(mutates=False)
def sizes(state: ShardState) -> dict[str, int]:
    """Row counts and embedding size of this shard (builds nothing)."""
    emb = state.embeddings_N_D
    n_lab = int(np.count_nonzero(state.labeled_N))
    return {
        "rows": state.n_rows(),
        "candidates": state.n_rows() - n_lab,
        "labeled": n_lab,
        "dim": 0 if emb is None else int(np.asarray(emb).shape[1]),
        "nbytes": 0 if emb is None else int(state.n_rows()) * int(np.asarray(emb).shape[1]) * 4,
    }


@shard_op
def init(state: ShardState, backend: str, device: str | None, want_sums: bool, labeled_rows: int) -> dict[str, Any]:
    """Build the shard's k-center state. Reports sizes, the first ``labeled_rows`` labelled
    rows (ids and embeddings, in row_id order) and, if asked and nothing here is labelled,
    the exact column sums of the embeddings (for the mean; see ``exact_column_sums``)."""
    kc = _ShardKC(state, backend, device)
    state.strategy_state["kcenter"] = kc
    n_lab = int(np.count_nonzero(state.labeled_N))
    sums = exact_column_sums(kc.x_np) if want_sums and n_lab == 0 else None
    lab_ids, lab_emb, _ = take_labeled(state, 0, labeled_rows) if n_lab and labeled_rows > 0 else (
        np.empty(0, np.int64), np.empty((0, kc.dim), np.float32), 0)
    return {
        "rows": int(kc.x_np.shape[0]),
        "candidates": int(kc.x_np.shape[0] - n_lab),
        "labeled": n_lab,
        "dim": kc.dim,
        "sums": sums,
        "labeled_ids": lab_ids,
        "labeled_emb": lab_emb,
        "backend": repr(kc.be),
    }


@shard_op(mutates=False)
def take_labeled(state: ShardState, start: int, count: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Labelled rows ``[start, start + count)`` of this shard in ``row_id`` order: (ids, embeddings, total)."""
    kc = _kc(state)
    pos = np.flatnonzero(state.labeled_N)
    pos = pos[np.argsort(kc.row_ids[pos], kind="stable")][start : start + count]
    return kc.row_ids[pos], kc.x_np[pos], int(np.count_nonzero(state.labeled_N))


@shard_op
def near_point(state: ShardState, point_D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate rows that may be nearest to ``point`` (approximate minimum + 2 eps): (ids, embeddings)."""
    kc = _kc(state)
    live = np.flatnonzero(kc.mind > -np.inf)
    if live.size == 0:
        return np.empty(0, np.int64), np.empty((0, kc.dim), np.float32)
    p32 = np.asarray(point_D, dtype=np.float32)[None, :]
    d2 = np.full(kc.n, np.inf, dtype=np.float32)
    for a in range(0, kc.n, kc.CHUNK_ROWS):
        b = min(kc.n, a + kc.CHUNK_ROWS)
        d2[a:b] = kc.be.to_numpy(kc.be.min_sq_dist_update(kc.x[a:b], p32, d2[a:b], x_sq_N=kc.x_sq[a:b]))
    d2 = d2[live]
    p_norm = float(np.sqrt(np.sum(np.asarray(point_D, np.float64) ** 2))) * (1 + 1e-6)
    eps = kc.be.error_bound(kc.x_norm_max, p_norm, kc.dim)
    near = live[d2 <= float(d2.min()) + 2.0 * eps]
    return kc.row_ids[near], kc.x_np[near]


@shard_op
def sync(
    state: ShardState, centers_M_D: np.ndarray, picked_ids: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray, float, dict[str, int]]:
    """Exclude ``picked_ids``, take the new centers, offer the top ``m`` rows.

    Returns ``(row_ids_m, embeddings_m, bound, work)``: the offered rows in order (larger
    ``mind`` first, ties to the lower ``row_id``), ``bound`` = an upper bound on the exact
    squared min-distance of every row not offered, now and after any further centers
    (``-inf`` when every live row is offered), and work counters. ``m = 0``: only store
    the centers (a chunk of a large initial set).
    """
    kc = _kc(state)
    picked = kc.positions(np.asarray(picked_ids, dtype=np.int64))
    kc.mind[picked] = -np.inf
    centers = np.asarray(centers_M_D, dtype=np.float32)
    if centers.shape[0]:
        kc.add_centers(centers)
    if m <= 0:
        return np.empty(0, np.int64), np.empty((0, kc.dim), np.float32), np.inf, {}
    top, bound = kc.refresh(m)
    return kc.row_ids[top], kc.x_np[top], bound, {"pairs": kc.processed}


@shard_op(mutates=False)
def gather(state: ShardState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of this shard: (row_ids, float32 embeddings, labelled mask)."""
    if state.embeddings_N_D is None:
        raise AlscaleError("strategy kcenter needs embeddings, but this shard has none")
    return (state.row_ids_N, np.asarray(state.embeddings_N_D, dtype=np.float32), state.labeled_N.copy(),
            state.eligible_N.copy())


@shard_op
def local_greedy(
    state: ShardState, budget: int, centers_L_D: np.ndarray, exclude_ids: np.ndarray, backend: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact greedy on this shard's rows alone (for ``kcenter_approx``): (row_ids, embeddings).

    ``centers_L_D`` are the initial centers (every labelled row and the first pick);
    ``exclude_ids`` rows are never picked (the first pick).
    """
    if state.embeddings_N_D is None:
        raise AlscaleError("strategy kcenter_approx needs embeddings, but this shard has none")
    emb = np.asarray(state.embeddings_N_D, dtype=np.float32)
    sub = ShardState(state.row_ids_N, None, emb)
    sub.labeled_N = state.labeled_N | np.isin(state.row_ids_N, np.asarray(exclude_ids, np.int64))
    sub.eligible_N = state.eligible_N
    n_free = sub.n_candidates()
    if n_free == 0 or budget <= 0:
        return np.empty(0, np.int64), np.empty((0, emb.shape[1]), np.float32)
    local = FanoutShards(InProcessFanout([sub]))
    stats = KCenterStats(mode="local", backend=backend)
    ids, _ = _greedy(local, min(budget, n_free), backend=backend, centers0=centers_L_D, take_labeled=False,
                     offer_rows=None, stats=stats)
    order = np.argsort(state.row_ids_N, kind="stable")
    return ids, emb[order[np.searchsorted(state.row_ids_N[order], ids)]]


# =====================================================================================
# Coordinator side
# =====================================================================================


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


def _mean_first_pick(shards: Shards, infos: list[dict[str, Any]], n_cand: int) -> tuple[int, np.ndarray]:
    """The candidate nearest to the exact mean of all candidates' embeddings (ties: lower row_id)."""
    mean_D = combine_exact_sums([i["sums"] for i in infos if i["sums"] is not None]) / float(n_cand)
    near = shards.call(_OP + "near_point", mean_D)
    ids = np.concatenate([n[0] for n in near])
    emb = np.concatenate([n[1] for n in near])
    d = sq_dist_to_point(emb, mean_D)
    tied = np.flatnonzero(d == d.min())
    j = int(tied[np.argmin(ids[tied])])
    return int(ids[j]), emb[j]


def _labeled_centers(shards: Shards, infos: list[dict[str, Any]], page: int, dim: int) -> np.ndarray:
    """Every labelled row's embedding in row_id order: the first page came with ``init``."""
    ids_parts = [i["labeled_ids"] for i in infos]
    emb_parts = [i["labeled_emb"] for i in infos]
    start = page
    while any(i["labeled"] > start for i in infos):
        got = shards.call(_OP + "take_labeled", start, page)
        ids_parts += [g[0] for g in got]
        emb_parts += [g[1] for g in got]
        start += page
    ids = np.concatenate(ids_parts) if ids_parts else np.empty(0, np.int64)
    emb = np.concatenate(emb_parts) if emb_parts else np.empty((0, dim), np.float32)
    return emb[np.argsort(ids, kind="stable")]


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


def _greedy(
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
    n_workers = _n_workers(shards)
    page = max(1, CHUNK_BYTES // max(1, n_workers * 4 * 1024))  # rows per shard per message (D <= 1024)
    want_mean = not take_labeled and (centers0 is None or centers0.shape[0] == 0)
    infos = shards.call(_OP + "init", backend, device, True if take_labeled else want_mean,
                        page if take_labeled else 0)
    dim = int(infos[0]["dim"])
    n_cand_s = [int(i["candidates"]) for i in infos]
    stats.backend = str(infos[0]["backend"])
    center_sets: list[np.ndarray] = []
    if centers0 is not None and centers0.shape[0]:
        center_sets.append(np.ascontiguousarray(centers0, dtype=np.float32))
    if take_labeled and any(i["labeled"] for i in infos):
        center_sets.append(_labeled_centers(shards, infos, page, dim))
    k = min(k, sum(n_cand_s))
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)

    picks_ids: list[int] = []
    picks_scores: list[float] = []
    picks_emb = np.empty((k, dim), dtype=np.float32)
    pending_c: list[np.ndarray] = []
    pending_ids: list[int] = []
    if center_sets:
        # Initial centers go out with the first round (a bigger set in several messages).
        c0 = np.concatenate(center_sets) if len(center_sets) > 1 else center_sets[0]
        chunk = max(1, CHUNK_BYTES // max(1, dim * 4))
        cut = ((c0.shape[0] - 1) // chunk) * chunk
        for a in range(0, cut, chunk):
            shards.call(_OP + "sync", c0[a : a + chunk], np.empty(0, np.int64), 0)
        pending_c.append(c0[cut:])
    else:
        row, emb = _mean_first_pick(shards, infos, sum(n_cand_s))
        picks_ids.append(row)
        picks_scores.append(math.inf)
        picks_emb[0] = emb
        pending_c.append(picks_emb[:1].copy())
        pending_ids.append(row)
        progress.advance()
    stats.seconds["init"] = time.perf_counter() - t0

    m_s = _initial_offer(k, n_cand_s, offer_rows)
    cands = _Candidates(dim)
    t_round = t_pick = 0.0
    while len(picks_ids) < k:
        ts = time.perf_counter()
        centers = np.concatenate(pending_c) if len(pending_c) > 1 else pending_c[0] if pending_c else (
            np.empty((0, dim), np.float32))
        done_ids = np.asarray(pending_ids, dtype=np.int64)
        offers = shards.call_each(_OP + "sync", [(centers, done_ids, m) for m in m_s])
        pending_c, pending_ids = [], []
        stats.rounds += 1
        ids = np.concatenate([o[0] for o in offers])
        emb = np.concatenate([o[1] for o in offers])
        bounds = np.array([o[2] for o in offers], dtype=np.float64)
        stats.offered += int(ids.shape[0])
        stats.pairs = int(sum(o[3].get("pairs", 0) for o in offers))
        cands.replace(ids, emb, [*center_sets, picks_emb[: len(picks_ids)]])
        bound = float(bounds.max())
        t_round += time.perf_counter() - ts
        ts = time.perf_counter()
        got, stop_value = 0, -np.inf
        while len(picks_ids) < k:
            j = cands.best()
            if j < 0:
                break
            v = float(cands.val[j])
            if not v > bound:  # an unsent row might be as far: not certified
                stop_value = v
                break
            n = len(picks_ids)
            picks_emb[n] = cands.emb[j]
            picks_ids.append(int(cands.ids[j]))
            picks_scores.append(math.sqrt(v))
            pending_c.append(picks_emb[n : n + 1])
            pending_ids.append(int(cands.ids[j]))
            cands.take(j)
            got += 1
        stats.picks_per_round.append(got)
        progress.advance(got)
        t_pick += time.perf_counter() - ts
        if len(picks_ids) < k:
            m_s = _adapt_offer(m_s, bounds, stop_value, got, k, offer_rows)
    stats.seconds["rounds"] = t_round
    stats.seconds["picks"] = t_pick
    logger.debug("kcenter: %d rounds, picks per round %s", stats.rounds, stats.picks_per_round)
    return np.asarray(picks_ids, dtype=np.int64), np.asarray(picks_scores, dtype=np.float64)


# =====================================================================================
# Entry points
# =====================================================================================


def _n_workers(shards: Shards) -> int:
    fan = getattr(shards, "fanout", None)
    return int(getattr(fan, "n_workers", 1)) if fan is not None else 1


def _coordinator_has_gpu() -> bool:
    from alscale.index import cuda_device

    return cuda_device() is not None


def _gathered(shards: Shards) -> Shards:
    parts = shards.call(_OP + "gather")
    state = ShardState(np.concatenate([p[0] for p in parts]), None, np.concatenate([p[1] for p in parts]))
    state.labeled_N = np.concatenate([p[2] for p in parts])
    state.eligible_N = np.concatenate([p[3] for p in parts])
    return FanoutShards(InProcessFanout([state]))


def kcenter_greedy(
    shards: Shards,
    budget: int,
    *,
    backend: str = "auto",
    mode: str = "auto",
    gather_bytes: int = 2 << 30,
    offer_rows: int | None = None,
) -> KCenterResult:
    """Exact k-center greedy over ``shards`` (labelled rows already excluded); see the module doc.

    Args:
        shards: the pool; labelled rows are marked (``shards.exclude``) and are the initial
            centers.
        budget: picks wanted; ``min(budget, unlabelled rows)`` are made.
        backend: distance backend of the shards (``auto``, ``numpy``, ``torch``, ``faiss``);
            it changes speed, never the selection.
        mode: ``sharded``; ``gather`` (all embeddings to this process, one device); ``auto``
            gathers when the embeddings fit ``gather_bytes`` and this process has a GPU.
        gather_bytes: the coordinator memory budget for ``gather``.
        offer_rows: rows each shard offers per round; None adapts it.

    Returns:
        A :class:`KCenterResult`: picks in order, their distance at pick time, stats.
    """
    t0 = time.perf_counter()
    rt0 = getattr(shards, "round_trips", 0)
    stats = KCenterStats(mode="sharded", backend=backend)
    use_gather = mode == "gather"
    if mode == "auto" and _coordinator_has_gpu():
        sz = shards.call(_OP + "sizes")
        use_gather = len(sz) > 1 and sum(s["nbytes"] for s in sz) <= gather_bytes
    work = shards
    if use_gather:
        stats.mode = "gather"
        tg = time.perf_counter()
        work = _gathered(shards)
        stats.seconds["gather"] = time.perf_counter() - tg
    ids, scores = _greedy(work, int(budget), backend=backend, centers0=None, take_labeled=True,
                          offer_rows=offer_rows, stats=stats)
    stats.round_trips = getattr(shards, "round_trips", 0) - rt0
    stats.seconds["total"] = time.perf_counter() - t0
    logger.info(
        "kcenter (%s, %s): %d picks, %d rounds, %d round trips, %.2f s",
        stats.mode, stats.backend, len(ids), stats.rounds, stats.round_trips, stats.seconds["total"],
    )
    return KCenterResult(ids, scores, stats)


def kcenter_approx(shards: Shards, budget: int, *, backend: str = "auto") -> KCenterResult:
    """Greedy per shard, then greedy on the union of the shards' picks (Malkomes et al. 2015).

    The initial centers (labelled rows; with none, the exact first pick nearest to the
    mean) are the same as the exact loop's; each shard then picks ``budget - 1`` (or
    ``budget``) rows by exact greedy on its own rows in one round trip, and the
    coordinator runs exact greedy over the union. Not the exact greedy selection.
    """
    t0 = time.perf_counter()
    rt0 = getattr(shards, "round_trips", 0)
    stats = KCenterStats(mode="approx", backend=backend)
    n_workers = _n_workers(shards)
    page = max(1, CHUNK_BYTES // max(1, n_workers * 4 * 1024))
    infos = shards.call(_OP + "init", backend, None, True, page)
    dim = int(infos[0]["dim"])
    n_cand = sum(int(i["candidates"]) for i in infos)
    k = min(int(budget), n_cand)
    if k == 0:
        return KCenterResult(np.empty(0, np.int64), np.empty(0, np.float64), stats)
    labeled = _labeled_centers(shards, infos, page, dim) if any(i["labeled"] for i in infos) else (
        np.empty((0, dim), np.float32))
    first_ids: list[int] = []
    first_scores: list[float] = []
    centers0 = labeled
    if labeled.shape[0] == 0:
        row, emb = _mean_first_pick(shards, infos, n_cand)
        first_ids, first_scores = [row], [math.inf]
        centers0 = emb[None, :].astype(np.float32)
    rest = k - len(first_ids)
    parts = shards.call(_OP + "local_greedy", rest, centers0, np.asarray(first_ids, np.int64), backend)
    u_ids = np.concatenate([p[0] for p in parts])
    u_emb = np.concatenate([p[1] for p in parts])
    union = FanoutShards(InProcessFanout([ShardState(u_ids, None, u_emb)]))
    ids, scores = _greedy(union, rest, backend=backend, centers0=centers0, take_labeled=False,
                          offer_rows=None, stats=stats)
    stats.round_trips = getattr(shards, "round_trips", 0) - rt0
    stats.seconds["total"] = time.perf_counter() - t0
    return KCenterResult(
        np.concatenate([np.asarray(first_ids, np.int64), ids]),
        np.concatenate([np.asarray(first_scores, np.float64), scores]),
        stats,
    )


def select_kcenter(
    shards: Shards, budget: int, *, options: Mapping[str, Any], seed: int = 0, round: int = 0
) -> Selection:
    """Registry entry of ``kcenter`` (deterministic: ``seed`` and ``round`` are unused)."""
    r = kcenter_greedy(
        shards,
        budget,
        backend=options.get("backend", "auto"),
        mode=options.get("mode", "auto"),
        gather_bytes=options.get("gather_bytes", 2 << 30),
        offer_rows=options.get("offer_rows"),
    )
    return Selection(indices_B=r.row_ids_B, scores_B=r.scores_B, strategy="kcenter")


def select_kcenter_approx(
    shards: Shards, budget: int, *, options: Mapping[str, Any], seed: int = 0, round: int = 0
) -> Selection:
    """Registry entry of ``kcenter_approx``."""
    r = kcenter_approx(shards, budget, backend=options.get("backend", "auto"))
    return Selection(indices_B=r.row_ids_B, scores_B=r.scores_B, strategy="kcenter_approx")


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class KCenterOptions(_spec.StrategyOptions):
    """Options of ``kcenter`` (checked by :func:`check_options`)."""

    backend: str = "auto"
    mode: str = "auto"
    gather_bytes: int = 2 << 30
    offer_rows: int | None = None

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


@dataclass(frozen=True)
class KCenterApproxOptions(_spec.StrategyOptions):
    """Options of ``kcenter_approx``: the nearest-center backend."""

    backend: str = "auto"

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


def select_with_quotas(shards: Shards, budget: int, lo: np.ndarray, hi: np.ndarray, *, options: Mapping[str, Any],
                       seed: int = 0, round: int = 0, avail: np.ndarray | None = None
                       ) -> tuple[Selection, np.ndarray]:
    """k-center under class quotas (:mod:`alscale.strategies.quotas`), in phases: within one
    the allowed classes cannot change, so the sharded greedy over the allowed rows, with the
    labelled rows and all earlier picks as centers, makes the constrained greedy's picks."""
    from alscale.strategies import quotas

    c = lo.shape[0]
    counts = np.zeros(c, dtype=np.int64)
    ids_B: list[int] = []
    scores_B: list[float] = []
    while len(ids_B) < budget:
        slots = budget - len(ids_B)
        need = np.maximum(lo - counts, 0)
        owed = int(need.sum())
        allowed = quotas.allowed_classes(counts, lo, hi, slots)
        if not allowed.any():
            break
        room = hi[allowed] - counts[allowed]
        length = int(min(room.min(), need[allowed].min() if slots <= owed else slots - owed))
        length = max(1, min(length, slots))
        if quotas.restrict_classes(shards, ~allowed) == 0:
            break  # no candidate row of an allowed class is left
        sel = select_kcenter(shards, length, options=options)
        if len(sel) == 0:
            break
        cls = quotas.classes_of(shards, sel.indices_B)
        for r, s in zip(sel.indices_B.tolist(), sel.scores_B.tolist()):
            ids_B.append(r)
            scores_B.append(s)
            counts[cls[r]] += 1
        shards.exclude(sel.indices_B)  # earlier picks are centers of the next phase
    return Selection(np.asarray(ids_B, np.int64), np.asarray(scores_B, np.float64), "kcenter"), counts


_NEEDS = _spec.Needs(log_probs=False, embeddings=True)
SPECS = (
    _spec.StrategySpec(
        "kcenter", "loop", "exact k-center greedy / Core-Set (Sener & Savarese, ICLR 2018; Gonzalez 1985)",
        options_type=KCenterOptions, needs=_NEEDS, aliases=("coreset", "core_set", "k_center", "k_center_greedy"),
        supports=_spec.Supports(quotas=True, keeps=("embeddings",)), select=select_kcenter,
        quota_select=select_with_quotas),
    _spec.StrategySpec(
        "kcenter_approx", "loop",
        "k-center greedy per shard, then on the union (approximate; Malkomes et al., NeurIPS 2015)",
        options_type=KCenterApproxOptions, needs=_NEEDS, supports=_spec.Supports(keeps=("embeddings",)),
        select=select_kcenter_approx),
)

