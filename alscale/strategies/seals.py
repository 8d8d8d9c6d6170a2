"""SEALS candidate filter (Coleman et al., AAAI 2022): only the k nearest neighbours of the
labelled rows are candidates; any strategy then runs on them.

At a million rows and more, most unlabelled rows are far from every labelled one and rarely
informative; SEALS restricts each selection to the union of the ``k`` nearest unlabelled
neighbours (Euclidean, on the embeddings) of every labelled row, which keeps the candidate
set proportional to the labelled set, not the pool. The paper maintains a kNN index as rows
are labelled; a job here computes the neighbours of its labelled set exactly (float32 GEMMs
find, per labelled row, every row within a rigorous error bound of its k-th nearest; those are
compared in canonical float64, ties to the lower ``row_id``), so the candidate set — and the
selection — is the same for any sharding. Cost: L x N x D per job.
"""

from __future__ import annotations

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.index.exact import sq_dist_rows
from alscale.strategies.shards import Shards, ShardState, shard_op

_OP = "alscale.strategies.seals."
_QUERIES = 512  # labelled rows per round trip
_ROWS = 16384


@shard_op
def seals_labeled(state: ShardState) -> tuple[np.ndarray, np.ndarray]:
    """(row_ids, embeddings) of this shard's labelled rows."""
    if state.embeddings_N_D is None:
        raise AlscaleError("the SEALS candidate filter needs embeddings, but this shard has none")
    pos = np.flatnonzero(state.labeled_N)
    return state.row_ids_N[pos], np.asarray(state.embeddings_N_D[pos], dtype=np.float32)


@shard_op
def seals_knn(state: ShardState, q_M_D: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, this shard's ``k`` nearest unlabelled rows: (sq distances [M, k], row_ids [M, k]),
    padded with (inf, -1)."""
    from alscale.index.base import norm_upper_bound
    from alscale.index.numpy_backend import NumpyBackend

    cand = np.flatnonzero(~state.labeled_N)
    x = np.ascontiguousarray(np.asarray(state.embeddings_N_D)[cand], dtype=np.float32)
    q = np.ascontiguousarray(q_M_D, dtype=np.float32)
    m, n = q.shape[0], x.shape[0]
    out_d = np.full((m, k), np.inf)
    out_i = np.full((m, k), -1, dtype=np.int64)
    if n == 0 or m == 0:
        return out_d, out_i
    x_sq = (x.astype(np.float64) ** 2).sum(1).astype(np.float32)
    q_sq = (q.astype(np.float64) ** 2).sum(1).astype(np.float32)
    d = x.shape[1]
    slack = 2.0 * NumpyBackend().error_bound(norm_upper_bound(float(x_sq.max()), d),
                                             norm_upper_bound(float(q_sq.max()), d), d)
    kk = min(k, n)
    # Pass 1: the k-th smallest approximate distance per query.
    best = np.full((m, kk), np.inf, dtype=np.float32)
    for r0 in range(0, n, _ROWS):
        approx = q_sq[:, None] + x_sq[None, r0:r0 + _ROWS] - 2.0 * (q @ x[r0:r0 + _ROWS].T)
        both = np.concatenate([best, approx], axis=1)
        best = np.partition(both, kk - 1, axis=1)[:, :kk]
    limit = best.max(axis=1).astype(np.float64) + slack
    # Pass 2: every row within the bound, compared canonically.
    qi_all, xi_all = [], []
    for r0 in range(0, n, _ROWS):
        approx = q_sq[:, None] + x_sq[None, r0:r0 + _ROWS] - 2.0 * (q @ x[r0:r0 + _ROWS].T)
        qi, xi = np.nonzero(approx <= limit[:, None])
        qi_all.append(qi)
        xi_all.append(r0 + xi)
    qi, xi = np.concatenate(qi_all), np.concatenate(xi_all)
    exact = sq_dist_rows(q[qi], x[xi])
    ids = state.row_ids_N[cand][xi]
    order = np.lexsort((ids, exact, qi))
    qi, exact, ids = qi[order], exact[order], ids[order]
    starts = np.searchsorted(qi, np.arange(m))
    rank = np.arange(qi.shape[0]) - starts[qi]
    keep = rank < k
    out_d[qi[keep], rank[keep]] = exact[keep]
    out_i[qi[keep], rank[keep]] = ids[keep]
    return out_d, out_i


def seals_candidates(shards: Shards, k: int) -> np.ndarray:
    """The union of the ``k`` nearest unlabelled rows of every labelled row (sorted row ids)."""
    parts = shards.call(_OP + "seals_labeled")
    q = np.concatenate([p[1] for p in parts]) if parts else np.empty((0, 0), np.float32)
    chosen: list[np.ndarray] = []
    for q0 in range(0, q.shape[0], _QUERIES):
        res = shards.call(_OP + "seals_knn", q[q0:q0 + _QUERIES], int(k))
        d = np.concatenate([r[0] for r in res], axis=1)
        ids = np.concatenate([r[1] for r in res], axis=1)
        for j in range(d.shape[0]):
            o = np.lexsort((ids[j], d[j]))[:k]
            chosen.append(ids[j][o][ids[j][o] >= 0])
    return np.unique(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)


def apply_seals(shards: Shards, k: int) -> int:
    """Restrict the shards' candidates to :func:`seals_candidates`; returns their number.
    With nothing labelled there are no neighbours: the filter is skipped (returns -1)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise AlscaleError(f"strategy.seals must be a number of neighbours >= 1; got {short_repr(k)}")
    if shards.n_rows() == shards.n_candidates():
        return -1
    cand = seals_candidates(shards, int(k))
    return shards.restrict(cand)
