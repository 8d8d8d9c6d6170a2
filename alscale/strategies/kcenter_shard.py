"""k-center greedy, shard side: each shard's min-distances and the ops the loop calls.

The state (:class:`KCenterShard`, in ``ShardState.strategy_state["kcenter"]``) holds an
approximate squared min-distance ``mind`` of every row to the centers it has been compared
with, brought up to date lazily (see :mod:`alscale.strategies.kcenter` for the loop and why
its picks are exact). The ops, with their typed results:

- :func:`sizes` → :class:`ShardSizes` (reads): counts and embedding bytes, building nothing;
- :func:`init` → :class:`KCenterInit`: build the state; the first page of labelled rows and,
  with no labelled row, the exact column sums of the embeddings (for the mean);
- :func:`near_point` → :class:`~alscale.strategies.shards.Rows` (reads): the candidates that
  may be nearest to a point;
- :func:`sync` → :class:`Offer`: the min-distance family's step — exclude the picks, take the
  new centers, offer the top ``m`` rows and a bound on every other row;
- :func:`gather` → :class:`Gathered` (reads): every row, for the gather mode.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from alscale.errors import AlscaleError
from alscale.index import get_backend, norm_upper_bound
from alscale.index.exact import exact_column_sums
from alscale.strategies.shards import Rows, ShardState, shard_op, take, topk_order

_KEY = "kcenter"
OP = f"{__name__}."


class KCenterShard:
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


def kcenter_state(state: ShardState) -> KCenterShard:
    """The shard's :class:`KCenterShard` (built by :func:`init`)."""
    kc = state.strategy_state.get(_KEY)
    if kc is None:
        raise RuntimeError("kcenter shard state missing: run the init op first")
    return kc


class ShardSizes(NamedTuple):
    """One shard's rows, candidates, labelled rows, embedding size and embedding bytes (float32)."""

    rows: int
    candidates: int
    labeled: int
    dim: int
    nbytes: int


@shard_op(mutates=False)
def sizes(state: ShardState) -> ShardSizes:
    """Row counts and embedding size of this shard (builds nothing)."""
    emb = state.embeddings_N_D
    n_lab = int(np.count_nonzero(state.labeled_N))
    dim = 0 if emb is None else int(np.asarray(emb).shape[1])
    return ShardSizes(state.n_rows(), state.n_rows() - n_lab, n_lab, dim, int(state.n_rows()) * dim * 4)


class KCenterInit(NamedTuple):
    """What :func:`init` reports: sizes, the exact column sums of the embeddings (``sums_D``,
    for the mean; None unless asked and nothing here is labelled), the first page of labelled
    rows with their embeddings, and the distance backend in use."""

    rows: int
    candidates: int
    labeled: int
    dim: int
    sums_D: Any
    labeled_first: Rows
    backend: str


@shard_op
def init(state: ShardState, backend: str, device: str | None, want_sums: bool, labeled_rows: int) -> KCenterInit:
    """Build the shard's k-center state; report sizes, the first ``labeled_rows`` labelled rows
    and, if asked and nothing here is labelled, the exact column sums of the embeddings (see
    ``exact_column_sums``)."""
    kc = KCenterShard(state, backend, device)
    state.strategy_state[_KEY] = kc
    n_lab = int(np.count_nonzero(state.labeled_N))
    sums = exact_column_sums(kc.x_np) if want_sums and n_lab == 0 else None
    first = take(state, None, ("embeddings",), "labeled", (0, labeled_rows)) if n_lab and labeled_rows > 0 else (
        Rows(np.empty(0, np.int64), np.empty((0, kc.dim), np.float32), None))
    return KCenterInit(kc.n, kc.n - n_lab, n_lab, kc.dim, sums, first, repr(kc.be))


@shard_op(mutates=False)
def near_point(state: ShardState, point_D: np.ndarray) -> Rows:
    """Candidate rows that may be nearest to ``point`` (approximate minimum + 2 eps), with embeddings."""
    kc = kcenter_state(state)
    live = np.flatnonzero(kc.mind > -np.inf)
    if live.size == 0:
        return Rows(np.empty(0, np.int64), np.empty((0, kc.dim), np.float32), None)
    p32 = np.asarray(point_D, dtype=np.float32)[None, :]
    d2 = np.full(kc.n, np.inf, dtype=np.float32)
    for a in range(0, kc.n, kc.CHUNK_ROWS):
        b = min(kc.n, a + kc.CHUNK_ROWS)
        d2[a:b] = kc.be.to_numpy(kc.be.min_sq_dist_update(kc.x[a:b], p32, d2[a:b], x_sq_N=kc.x_sq[a:b]))
    d2 = d2[live]
    p_norm = float(np.sqrt(np.sum(np.asarray(point_D, np.float64) ** 2))) * (1 + 1e-6)
    eps = kc.be.error_bound(kc.x_norm_max, p_norm, kc.dim)
    near = live[d2 <= float(d2.min()) + 2.0 * eps]
    return Rows(kc.row_ids[near], kc.x_np[near], None)


class Offer(NamedTuple):
    """One shard's answer to :func:`sync`: the offered rows in order (larger ``mind`` first,
    ties to the lower ``row_id``) with their embeddings, ``bound`` (an upper bound on the exact
    squared min-distance of every row not offered, now and after any further centers; -inf
    when every live row is offered) and ``pairs`` (row-center distances computed so far)."""

    row_ids_M: np.ndarray
    embeddings_M_D: np.ndarray
    bound: float
    pairs: int


@shard_op
def sync(state: ShardState, centers_M_D: np.ndarray, picked_ids: np.ndarray, m: int) -> Offer:
    """Exclude ``picked_ids``, take the new centers, offer the top ``m`` rows (``m = 0``: only
    store the centers, e.g. a chunk of a large initial set)."""
    kc = kcenter_state(state)
    picked = kc.positions(np.asarray(picked_ids, dtype=np.int64))
    kc.mind[picked] = -np.inf
    centers = np.asarray(centers_M_D, dtype=np.float32)
    if centers.shape[0]:
        kc.add_centers(centers)
    if m <= 0:
        return Offer(np.empty(0, np.int64), np.empty((0, kc.dim), np.float32), np.inf, 0)
    top, bound = kc.refresh(m)
    return Offer(kc.row_ids[top], kc.x_np[top], bound, kc.processed)


class Gathered(NamedTuple):
    """Every row of one shard: ids, float32 embeddings, labelled and eligible masks."""

    row_ids_N: np.ndarray
    embeddings_N_D: np.ndarray
    labeled_N: np.ndarray
    eligible_N: np.ndarray


@shard_op(mutates=False)
def gather(state: ShardState) -> Gathered:
    """All rows of this shard (for the gather mode)."""
    if state.embeddings_N_D is None:
        raise AlscaleError("strategy kcenter needs embeddings, but this shard has none")
    return Gathered(state.row_ids_N, np.asarray(state.embeddings_N_D, dtype=np.float32), state.labeled_N.copy(),
                    state.eligible_N.copy())
