"""The composed selection's greedy: exact and certified across shards, for a key that can
only fall as picks are made (:func:`~alscale.strategies.objective_kernels.key_of`).

At each step the greedy picks the candidate with the largest key (ties: lower ``row_id``):

- ``("none",)``: the combined score ``s`` (exact top-k);
- ``("kcenter", w, with_scores)``: ``s + w * d``, ``d`` the distance to the nearest center
  (the labelled rows and every earlier pick): with no scores this is the k-center greedy of
  Gonzalez (1985) / Core-Set (Sener & Savarese, ICLR 2018); with ``w -> 0`` the top-k;
- ``("threshold", r²)``: ``s`` for rows at distance >= r from every center, else excluded: the
  greedy over the combined score that skips rows within r of a pick ("no two picks closer
  than r").

Distances only shrink as centers are added, so a key only falls. The shards keep a float32
squared distance to the centers they have seen (``mind``, within ``eps`` of the canonical
value) and offer their top ``m`` rows by an *upper bound* of the key, with the bound of the
first row they did not offer; the coordinator computes the offered rows' exact keys from
canonical float64 distances (:mod:`alscale.index.exact`) and picks while the best one beats
every shard's bound in (key, lower row_id) order: an unsent row can neither have a larger
key nor win a tie. When it cannot certify a pick the round ends; the shards take the new
centers in one update and offer again (DESIGN §3: one round trip per round, not per pick).
The picks are therefore the single-machine greedy's, for any sharding and executor.

The shard ops, with their typed results (both change the shard's :class:`DistanceShard`):

- :func:`init` → ``int``: start the distance state; the embedding width (0: none needed);
- :func:`sync` → :class:`Offer`: mark the picks, take the new centers, offer the top ``m``
  rows by an upper bound of the key, with the :class:`Bound` on every row not offered.

The coordinator side, :class:`DistanceGreedy`, returns its picks as :class:`Pick` s.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from alscale.errors import AlscaleError
from alscale.index import canonical_min_sq_dist, get_backend, norm_upper_bound, sq_dist_rows
from alscale.strategies import progress
from alscale.strategies.objective_kernels import key_of, upper_sq
from alscale.strategies.objective_ops import KEY as OBJ_KEY
from alscale.strategies.shards import LastingState, Shards, ShardState, shard_op, topk_order

KEY = "_objective_distances"
_OP = f"{__name__}."
#: Most rows one shard offers in one round.
MAX_OFFER = 1 << 16
#: Rows per product when the shard takes new centers (bounds the temporary).
CHUNK_ROWS = 1 << 16


@dataclass
class DistanceShard(LastingState):
    """One shard's distances to the centers (kept in ``ShardState.strategy_state`` across the
    quota phases' changes of the candidates).

    ``mind_N[i]`` is a float32 squared distance of row i to its nearest center among the
    first ``seen_N[i]`` centers (``+inf`` before any): still an upper bound (within ``eps``)
    for all the centers, since distances only shrink. Rows are brought up to date lazily,
    in decreasing order of their (stale) key bound, only as far as the offer needs (as the
    k-center strategy's shards do): rows far below the offer are never compared again.
    """

    backend: str
    mind_N: np.ndarray  # float32
    seen_N: np.ndarray  # int64: how many of the centers each row has been compared with
    taken_N: np.ndarray  # bool: picked by this selection (never offered again)
    x_norm_max: float
    centers: np.ndarray  # float32 [M, D]: every center sent so far, in order
    c_norm_max: float = 0.0
    processed: int = 0  # row-center pairs compared (work counter)


#: Rows never compared are first compared with this many centers only: a finite bound for
#: every row; the other centers are applied lazily.
FIRST_CENTERS = 64


def _embeddings(state: ShardState) -> np.ndarray:
    if state.embeddings_N_D is None:
        raise AlscaleError("the selection's diversity needs embeddings, but this shard has none: give the pool an "
                           "'embedding' column or use a model that returns (logits, embedding)")
    return np.ascontiguousarray(state.embeddings_N_D, dtype=np.float32)


@shard_op
def init(state: ShardState, backend: str, need_embeddings: bool) -> int:
    """Start this shard's distance state (no centers yet); returns the embedding width (0: none)."""
    n = state.n_rows()
    norm = 0.0
    dim = 0
    if need_embeddings:
        x = _embeddings(state)
        dim = int(x.shape[1])
        sq = np.einsum("ij,ij->i", x, x) if n else np.zeros(0, np.float32)
        norm = norm_upper_bound(float(sq.max()) if n else 0.0, dim)
    state.strategy_state[KEY] = DistanceShard(backend, np.full(n, np.inf, np.float32), np.zeros(n, np.int64),
                                       np.zeros(n, bool), norm, np.empty((0, dim), np.float32))
    return dim


def _add_centers(ds: DistanceShard, centers_M_D: np.ndarray) -> None:
    c = np.ascontiguousarray(centers_M_D, dtype=np.float32)
    c64 = c.astype(np.float64)
    ds.c_norm_max = max(ds.c_norm_max, float(np.sqrt(np.einsum("ij,ij->i", c64, c64).max())) * (1 + 1e-6))
    ds.centers = np.concatenate([ds.centers, c]) if ds.centers.shape[0] else c


def _catch_up(ds: DistanceShard, x: np.ndarray, rows: np.ndarray, upto: int) -> None:
    """Compare ``rows`` with the centers they have not seen, up to ``centers[:upto]``: one
    product per group of rows that saw the same centers."""
    be = get_backend(ds.backend)
    seen = ds.seen_N[rows]
    for s0 in np.unique(seen):
        if s0 >= upto:
            continue
        group = rows[seen == s0]
        c = ds.centers[s0:upto]
        for a in range(0, group.size, CHUNK_ROWS):
            g = group[a:a + CHUNK_ROWS]
            ds.mind_N[g] = be.to_numpy(be.min_sq_dist_update(x[g], c, ds.mind_N[g]))
        ds.processed += int(group.size) * int(upto - s0)
        ds.seen_N[group] = upto


class Bound(NamedTuple):
    """What a shard did not offer: every such row has a key at most ``key``, and equal only
    with a row_id greater than ``row_id`` (``row_id = -1``: no tie with it is certain);
    ``(-inf, 0)`` when every live row was offered."""

    key: float
    row_id: int


#: The bound of a shard that offered every live row.
NOTHING_LEFT = Bound(-math.inf, 0)


class Offer(NamedTuple):
    """One shard's answer to :func:`sync`: the offered rows (M, best upper bound of the key
    first, ties to the lower ``row_id``) — ``row_ids_M``, their float32 ``embeddings_M_D``
    (None for the key ``("none",)``), their float64 combined ``scores_M`` — and the
    :class:`Bound` on every row not offered."""

    row_ids_M: np.ndarray
    embeddings_M_D: np.ndarray | None
    scores_M: np.ndarray
    bound: Bound


@shard_op
def sync(state: ShardState, centers_M_D: np.ndarray | None, picked_ids: np.ndarray, m: int, key: tuple) -> Offer:
    """Mark ``picked_ids`` taken, take the new centers, offer the top ``m`` candidates by an
    upper bound of ``key``."""
    ds: DistanceShard = state.strategy_state[KEY]
    ds.taken_N |= np.isin(state.row_ids_N, np.asarray(picked_ids, np.int64))
    if centers_M_D is not None and centers_M_D.shape[0]:
        _add_centers(ds, centers_M_D)
    live = np.flatnonzero(state.candidates_N & ~ds.taken_N)
    s_all = state.strategy_state[OBJ_KEY].combined_N
    if key[0] == "none":
        top, bound = _top(key_of(s_all[live], None, key), state.row_ids_N[live], m)
        return Offer(state.row_ids_N[live[top]], None, s_all[live[top]], bound)
    x = _embeddings(state)
    pos, bound = _refresh(ds, x, s_all, state.row_ids_N, live, m, key, x.shape[1])
    return Offer(state.row_ids_N[pos], x[pos], s_all[pos], bound)


def _top(upper: np.ndarray, ids: np.ndarray, m: int) -> tuple[np.ndarray, Bound]:
    """Positions of the ``m`` best (upper, lower id) among rows with a key, and the (m+1)-th as the bound."""
    ok = np.flatnonzero(upper > -np.inf)
    top = ok[topk_order(upper[ok], ids[ok], m + 1)]
    bound = Bound(float(upper[top[m]]), int(ids[top[m]])) if top.shape[0] > m else NOTHING_LEFT
    return top[:m], bound


def _refresh(ds: DistanceShard, x: np.ndarray, s_all: np.ndarray, ids_all: np.ndarray, live: np.ndarray, m: int,
             key: tuple, dim: int) -> tuple[np.ndarray, Bound]:
    """Bring live rows up to date, largest stale bound first, until the top ``m`` up-to-date
    rows certainly hold the shard's top ``m``; returns their positions and the bound on the rest."""
    n_c = ds.centers.shape[0]
    eps = get_backend(ds.backend).error_bound(ds.x_norm_max, ds.c_norm_max, dim)
    never = live[(ds.seen_N[live] == 0) & (n_c > 0)]
    if never.size:  # a finite bound for every row: the first centers only
        _catch_up(ds, x, never, min(n_c, FIRST_CENTERS))

    def upper(pos: np.ndarray) -> np.ndarray:
        return key_of(s_all[pos], upper_sq(ds.mind_N[pos], eps), key)

    tier = max(4 * (m + 1), 2048)
    while True:
        fresh = live[ds.seen_N[live] >= n_c]
        stale = live[ds.seen_N[live] < n_c]
        top, bound = _top(upper(fresh), ids_all[fresh], m)
        up_s = upper(stale)
        top_stale = float(up_s.max()) if stale.size else -math.inf
        if stale.size == 0 or (top.size == m and bound.key >= top_stale):
            break
        rows = stale if stale.size <= tier else stale[np.argpartition(-up_s, tier - 1)[:tier]]
        _catch_up(ds, x, rows, n_c)
        tier *= 4
    if top_stale > -math.inf and (top_stale, 1) > (bound.key, -bound.row_id):
        bound = Bound(top_stale, -1)  # a stale row may reach it: no tie with it is certain
    return fresh[top], bound


@dataclass
class _Offered:
    """The rows offered this phase, at the coordinator, with exact squared distances and keys."""

    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    emb: np.ndarray | None = None
    s: np.ndarray = field(default_factory=lambda: np.empty(0))
    d2: np.ndarray = field(default_factory=lambda: np.empty(0))
    keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    eps: float = 0.0

    def replace(self, ids: np.ndarray, emb: np.ndarray | None, s: np.ndarray, centers: np.ndarray | None,
                key: tuple) -> None:
        """The new offer; exact distances kept for rows already held, computed for the rest."""
        d2 = np.full(ids.shape[0], np.inf)
        if emb is not None:
            known = np.isin(ids, self.ids)
            if known.any():
                order = np.argsort(self.ids, kind="stable")
                d2[known] = self.d2[order[np.searchsorted(self.ids[order], ids[known])]]
            fresh = np.flatnonzero(~known)
            if fresh.size and centers is not None and centers.shape[0]:
                d2[fresh] = canonical_min_sq_dist(emb[fresh], centers)
            sq = np.einsum("ij,ij->i", emb, emb)
            norm = norm_upper_bound(float(sq.max()), emb.shape[1]) if sq.size else 0.0
            self.eps = get_backend("numpy").error_bound(norm, norm, emb.shape[1])
        self.ids, self.emb, self.s, self.d2 = ids, emb, np.asarray(s, np.float64), d2
        self.keys = key_of(self.s, d2, key)

    def best(self) -> int:
        """Position of the largest key (ties: lower row_id); -1 when none is left."""
        if self.keys.size == 0 or not (self.keys > -np.inf).any():
            return -1
        top = self.keys.max()
        tied = np.flatnonzero(self.keys == top)
        return int(tied[np.argmin(self.ids[tied])])

    def take(self, j: int, key: tuple) -> None:
        """Pick offered row ``j``: it leaves the offer and (with distances) becomes a center."""
        self.keys[j] = -np.inf
        if self.emb is None:
            return
        c = self.emb[j]
        e = self.emb
        approx = np.einsum("ij,ij->i", e, e) - 2.0 * (e @ c) + float(c @ c)
        maybe = np.flatnonzero((approx <= self.d2 + self.eps) & (self.keys > -np.inf))
        if maybe.size:
            self.d2[maybe] = np.minimum(self.d2[maybe], sq_dist_rows(e[maybe], c))
            self.keys[maybe] = key_of(self.s[maybe], self.d2[maybe], key)


class Pick(NamedTuple):
    """One pick of :class:`DistanceGreedy`: its ``row_id``, the ``key`` it won with, its
    combined ``score`` and ``sq_dist``, its squared distance to the nearest center at pick
    time (``inf`` with no center, or for the key ``("none",)``)."""

    row_id: int
    key: float
    score: float
    sq_dist: float


@dataclass
class GreedyStats:
    """What the greedy did (the manifest's ``selection.diversity``)."""

    rounds: int = 0
    offered: int = 0
    picks_per_round: list[int] = field(default_factory=list)


class DistanceGreedy:
    """The coordinator side of the certified greedy (module docstring) over ``shards``.

    ``centers_M_D``: the initial centers (the labelled rows' embeddings; none for
    ``("none",)`` keys). The shards keep their distances across :meth:`run` calls (the
    phases of a constrained selection, between which the candidates change); every pick
    becomes a center of the following steps.
    """

    def __init__(self, shards: Shards, key: tuple, centers_M_D: np.ndarray | None, backend: str = "auto",
                 scale: float | None = 1.0) -> None:
        self.shards, self.key = shards, key
        dims: list[int] = shards.call(OP_INIT, backend, key[0] != "none")
        self.n_shards = len(dims)
        self.centers = None if key[0] == "none" else np.ascontiguousarray(
            np.empty((0, max(dims)), np.float32) if centers_M_D is None else centers_M_D, np.float32)
        self._unsent_centers = self.centers
        self._unsent_ids: list[int] = []
        self.scale = scale  # k-center: the distance unit (None: auto, measured when the greedy starts)
        self.stats = GreedyStats()
        self.seconds = 0.0  # wall time in run()
        self.last_picks: list[Pick] = []  # a constrained selection's picks, all phases (objective._phased)

    def _register(self, row: int, emb_D: np.ndarray) -> None:
        c = np.asarray(emb_D, np.float32).reshape(1, -1)
        self._unsent_ids.append(int(row))
        self.centers = np.concatenate([self.centers, c])
        self._unsent_centers = c if self._unsent_centers is None else np.concatenate([self._unsent_centers, c])

    def _first_pick(self) -> Pick:
        """k-center with no center yet: the best combined score, or (no scores) the row nearest
        to the candidates' mean, as the k-center strategy starts."""
        from alscale.strategies.kcenter import kcenter_greedy
        from alscale.strategies.objective_ops import OP_RANK

        if self.key[2]:
            self.shards.call(OP_RANK)
            best = self.shards.topk(1)
            row, s = int(best.row_ids_K[0]), float(best.scores_K[0])
        else:
            row, s = int(kcenter_greedy(self.shards, 1).row_ids_B[0]), 0.0
        emb = np.concatenate([r.embeddings_R_D for r in self.shards.take(np.array([row]))])
        self._register(row, emb[0])
        return Pick(row, math.inf, s, math.inf)

    def start(self) -> list[Pick]:
        """k-center: make the first pick when there is no center, and measure the ``auto``
        scale: the largest distance of a candidate to its nearest center, now."""
        picks = []
        if self.key[0] != "kcenter":
            return picks
        if self.centers.shape[0] == 0:
            picks.append(self._first_pick())
            progress.advance(1)
        if self.scale is None:
            weight, with_scores = self.key[1], self.key[2]
            self.key = ("kcenter", 1.0, False)
            far = self.peek()
            self.scale = far if math.isfinite(far) and far > 0 else 1.0
            self.key = ("kcenter", weight / self.scale, with_scores)
        return picks

    def _pick(self, off: _Offered, j: int) -> Pick:
        row, k, s, d2 = int(off.ids[j]), float(off.keys[j]), float(off.s[j]), float(off.d2[j])
        off.take(j, self.key)
        if off.emb is not None:
            self._register(row, off.emb[j])
        else:
            self._unsent_ids.append(row)
        return Pick(row, k, s, d2)

    def _offer(self, off: _Offered, m_s: list[int]) -> Bound:
        """One round trip: the shards take the new centers and offer again; returns the largest bound."""
        args = [(self._unsent_centers, np.asarray(self._unsent_ids, np.int64), m, self.key) for m in m_s]
        offers: list[Offer] = self.shards.call_each(OP_SYNC, args)
        self._unsent_centers, self._unsent_ids = None, []
        ids = np.concatenate([o.row_ids_M for o in offers])
        emb = None if offers[0].embeddings_M_D is None else np.concatenate([o.embeddings_M_D for o in offers])
        off.replace(ids, emb, np.concatenate([o.scores_M for o in offers]), self.centers, self.key)
        self.stats.rounds += 1
        self.stats.offered += int(ids.shape[0])
        self._bounds = [o.bound for o in offers]
        return max(self._bounds, key=lambda b: (b.key, -b.row_id))

    def run(self, k: int, offer_rows: int | None = None) -> list[Pick]:
        """Up to ``k`` :class:`Pick` s among the current candidates, in pick order. Fewer when
        the candidates run out (or the threshold leaves none)."""
        t0 = time.perf_counter()
        try:
            return self._run(k, offer_rows)
        finally:
            self.seconds += time.perf_counter() - t0

    def _run(self, k: int, offer_rows: int | None) -> list[Pick]:
        picks = self.start() if k > 0 else []
        off = _Offered()
        per = offer_rows or (k + 1 if self.key[0] == "none" else math.ceil(1.25 * max(16, k / 4) / self.n_shards) + 16)
        m_s = [min(MAX_OFFER, per)] * self.n_shards
        while len(picks) < k:
            bound = self._offer(off, m_s)
            got = 0
            while len(picks) < k:
                j = off.best()
                if j < 0 or not _beats(float(off.keys[j]), int(off.ids[j]), bound):
                    break
                picks.append(self._pick(off, j))
                got += 1
            self.stats.picks_per_round.append(got)
            progress.advance(got)
            if off.best() < 0 and bound.key == -math.inf:
                break  # nothing left anywhere
            grown = [min(MAX_OFFER, 2 * m if b.key > -math.inf else m) for m, b in zip(m_s, self._bounds)]
            if got == 0 and grown == m_s:
                raise RuntimeError(f"objective greedy: no pick certified with {MAX_OFFER} rows offered per shard")
            m_s = grown
        return picks

    def peek(self) -> float:
        """The largest key any candidate has now, certified (nothing is picked)."""
        off = _Offered()
        m_s = [64] * self.n_shards
        while True:
            bound = self._offer(off, m_s)
            j = off.best()
            if j < 0 and bound.key == -math.inf:
                return -math.inf
            if j >= 0 and _beats(float(off.keys[j]), int(off.ids[j]), bound):
                return float(off.keys[j])
            m_s = [min(MAX_OFFER, 4 * m) for m in m_s]


def _beats(key: float, row: int, bound: Bound) -> bool:
    """Whether (key, row) comes before every unsent row: a larger key, or the same key as the
    bound with a lower row_id."""
    return key > bound.key or (key == bound.key and key > -math.inf and row < bound.row_id)


OP_INIT = _OP + "init"
OP_SYNC = _OP + "sync"
