"""Sharded k-means (Lloyd's algorithm) over the embeddings, the same for every sharding.

Used by TypiClust (clusters of typical rows), Cluster-Margin (diversity by cluster) and
ProbCover (pseudo-labels for its purity rule). Every row of the pool — labelled or not —
is clustered, as those papers do.

**Same answer for every sharding.** Initial centers are exact k-means++ seeding
(:func:`alscale.strategies.kmeanspp.seed_exact`) over the unlabelled rows. A row's cluster
is the canonical nearest center (:func:`canonical_argmin`: float32 GEMM distances narrow
the candidates to those within a rigorous error bound of the minimum, which are then
compared in canonical float64; ties go to the lower center index) — a function of the
row and the centers only. New centers are the means of their rows with *exact* column sums
(:func:`alscale.index.exact.exact_column_sums`, combined across shards without rounding),
so they too are the same float64 vectors for any sharding. Lloyd's iterations stop when no
row changes cluster, when the centers' weighted squared shift is at most ``tol`` (1e-4)
times the weighted spread of the centers (sklearn's tolerance, on the between-cluster
variance), or after ``max_iters``; a cluster left empty keeps its center. Both tests use
exact quantities, so they too are the same for any sharding.

Shard state lives in ``state.strategy_state["kmeans"]``: each row's cluster label.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from alscale.index.exact import combine_exact_sums, exact_column_sums, sq_dist_rows
from alscale.strategies.shards import Shards, ShardState, shard_op

logger = logging.getLogger(__name__)

_OP = "alscale.strategies.clustering."
_ROWS_PER_BLOCK = 16384


def canonical_argmin(x_N_D: np.ndarray, centers_K_D: np.ndarray, x_sq_N: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Index of the canonical nearest center of each row (ties: lower index) and its
    canonical squared distance; float32 GEMMs prune, float64 decides (module docstring).
    ``x_sq_N``: the rows' squared norms (float32), when the caller keeps them."""
    from alscale.index.base import norm_upper_bound
    from alscale.index.numpy_backend import NumpyBackend

    x = np.ascontiguousarray(x_N_D, dtype=np.float32)
    c = np.ascontiguousarray(centers_K_D, dtype=np.float32)
    n = x.shape[0]
    best = np.zeros(n, dtype=np.int64)
    best_d = np.full(n, np.inf)
    if n == 0:
        return best, best_d
    be = NumpyBackend()
    d = x.shape[1]
    x_sq = _sq_norms(x) if x_sq_N is None else x_sq_N
    c_sq = _sq_norms(c)
    slack = 2.0 * be.error_bound(norm_upper_bound(float(x_sq.max()), d), norm_upper_bound(float(c_sq.max()), d), d)
    for r0 in range(0, n, _ROWS_PER_BLOCK):
        xb, xs = x[r0:r0 + _ROWS_PER_BLOCK], x_sq[r0:r0 + _ROWS_PER_BLOCK]
        approx = xb @ c.T
        approx *= -2.0
        approx += xs[:, None]
        approx += c_sq[None, :]
        first = approx.argmin(axis=1)
        at = np.arange(xb.shape[0])
        low = approx[at, first].copy()
        if c.shape[0] > 1:  # a row whose runner-up is farther than the slack is decided
            approx[at, first] = np.inf
            runner_up = approx.min(axis=1)
            approx[at, first] = low
            decided = (runner_up.astype(np.float64) - low) > slack
        else:
            decided = np.ones(xb.shape[0], dtype=bool)
        dec = np.flatnonzero(decided)
        best[r0 + dec] = first[dec]
        best_d[r0 + dec] = sq_dist_rows(xb[dec], c[first[dec]])
        open_rows = np.flatnonzero(~decided)
        if open_rows.size == 0:
            continue
        sub = approx[open_rows]
        limit = sub.min(axis=1).astype(np.float64) + slack
        rows, cols = np.nonzero(sub <= limit[:, None])
        rows = open_rows[rows]
        exact = sq_dist_rows(xb[rows], c[cols])
        # Per row: the smallest exact distance, ties to the lower center (lexsort: last key first).
        order = np.lexsort((cols, exact, rows))
        first = np.ones(order.shape[0], dtype=bool)
        first[1:] = rows[order][1:] != rows[order][:-1]
        pick = order[first]
        best[r0 + rows[pick]] = cols[pick]
        best_d[r0 + rows[pick]] = exact[pick]
    return best, best_d


def _sq_norms(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float32)
    for r0 in range(0, x.shape[0], _ROWS_PER_BLOCK):
        xb = x[r0:r0 + _ROWS_PER_BLOCK].astype(np.float64)
        out[r0:r0 + _ROWS_PER_BLOCK] = np.einsum("nd,nd->n", xb, xb)
    return out


# -- shard ops ----------------------------------------------------------------------------

def _emb(state: ShardState) -> np.ndarray:
    if state.embeddings_N_D is None:
        raise ValueError("k-means needs embeddings, but this shard has none")
    return state.embeddings_N_D


@shard_op
def km_assign(state: ShardState, centers_K_D: np.ndarray) -> tuple[int, np.ndarray, list]:
    """Assign every row to its canonical nearest center; return (rows that changed cluster,
    rows per cluster, exact column-sum parts per non-empty cluster)."""
    emb = _emb(state)
    if "km_x" not in state.strategy_state:
        x = np.ascontiguousarray(emb, dtype=np.float32)
        state.strategy_state["km_x"] = (x, _sq_norms(x))
    x, x_sq = state.strategy_state["km_x"]
    labels, _ = canonical_argmin(x, centers_K_D, x_sq)
    old = state.strategy_state.get("kmeans")
    changed = int(labels.shape[0] if old is None else np.count_nonzero(old != labels))
    state.strategy_state["kmeans"] = labels
    k = centers_K_D.shape[0]
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for j in np.flatnonzero(counts):
        rows = order[bounds[j]:bounds[j + 1]]
        parts.append((int(j), exact_column_sums(x[rows])))
    return changed, counts, parts


@shard_op(mutates=False)
def km_labels(state: ShardState, row_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_ids, cluster labels, labelled flags) of the requested rows (all rows when None)."""
    labels = state.strategy_state["kmeans"]
    pos = np.arange(state.row_ids_N.shape[0]) if row_ids is None else np.flatnonzero(np.isin(state.row_ids_N, row_ids))
    return state.row_ids_N[pos], labels[pos], state.labeled_N[pos]


@shard_op(mutates=False)
def km_counts(state: ShardState, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows per cluster and labelled rows per cluster, ``[k]`` each."""
    labels = state.strategy_state["kmeans"]
    return np.bincount(labels, minlength=k), np.bincount(labels[state.labeled_N], minlength=k)


@shard_op(mutates=False)
def km_members(state: ShardState, cluster: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_ids, embeddings, not-pickable flags) of this shard's rows in ``cluster``."""
    pos = np.flatnonzero(state.strategy_state["kmeans"] == cluster)
    return state.row_ids_N[pos], np.asarray(_emb(state)[pos], dtype=np.float32), ~state.candidates_N[pos]


# -- coordinator --------------------------------------------------------------------------

def initial_centers(shards: Shards, k: int, *, seed: int, round: int) -> np.ndarray:
    """``k`` k-means++ seeds (exact D² sampling over the unlabelled rows), as embeddings ``[k, D]``."""
    from alscale.strategies.kmeanspp import seed_exact
    from alscale.strategies.progress import reporting

    with reporting(lambda n: None):  # seeds are not picks of the selection
        sel, _ = seed_exact(shards, k, space="embedding", seed=seed, round=round, strategy="kmeans")
    ids = np.asarray(sel.indices_B, dtype=np.int64)
    parts = shards.take(ids, ("embeddings",))
    got_ids = np.concatenate([p.row_ids_R for p in parts])
    got = np.concatenate([p.embeddings_R_D for p in parts])
    pos = {int(r): i for i, r in enumerate(got_ids)}
    return got[[pos[int(r)] for r in ids]]


def kmeans(shards: Shards, k: int, *, seed: int, round: int, max_iters: int = 100, tol: float = 1e-4
           ) -> dict[str, Any]:
    """Lloyd's k-means of every row's embedding into ``k`` clusters (module docstring).

    Returns ``{"centers": [k, D] float64, "counts": [k], "iters": int}``; each shard keeps
    its rows' labels for the ``km_*`` ops.
    """
    centers = initial_centers(shards, k, seed=seed, round=round).astype(np.float64)
    n_rows = shards.n_rows()
    iters = 0
    counts = np.zeros(k, dtype=np.int64)
    while True:
        res = shards.call(_OP + "km_assign", centers.astype(np.float32))
        iters += 1
        changed = sum(r[0] for r in res)
        counts = np.sum([r[1] for r in res], axis=0)
        by_cluster: dict[int, list] = {}
        for r in res:
            for j, part in r[2]:
                by_cluster.setdefault(j, []).append(part)
        new = centers.copy()
        for j, parts in by_cluster.items():
            new[j] = combine_exact_sums(parts) / counts[j]
        # sklearn's rule, on exact quantities: the centers moved (weighted by their rows) by at
        # most tol times the spread of the clusters around their mean.
        w = counts / max(n_rows, 1)
        mean = (w[:, None] * new).sum(axis=0)
        spread = float((w * ((new - mean) ** 2).sum(axis=1)).sum())
        shift = float((w * ((new - centers) ** 2).sum(axis=1)).sum())
        if changed == 0 or shift <= tol * spread or iters >= max_iters:
            break
        centers = new
    logger.debug("k-means: %d clusters, %d Lloyd iterations", k, iters)
    return {"centers": centers, "counts": counts, "iters": iters}
