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

**Hamerly's bounds** (Hamerly, SDM 2010; Elkan, ICML 2003; the assignment kernels are
:mod:`alscale.strategies.clustering_assign`) skip the rows whose cluster
cannot change: each row keeps an upper bound ``u`` on its true distance to its center and
a lower bound ``l`` on its distance to every other center. When the centers move by
``δ_j``, ``u += δ_own`` and ``l −= max_{j ≠ own} δ_j`` stay bounds (triangle inequality);
a row with ``u < l`` (by a relative margin far above float64 rounding) keeps its cluster —
its canonical nearest center is still the same one — and only the other rows are assigned
again (first ``u`` is tightened to the true distance, then the full canonical pass). The
labels are therefore exactly those of plain Lloyd's; late iterations, where few rows
move, cost O(N) instead of O(N·K·D).

Shard state: :class:`KMeansShard` in ``state.strategy_state["kmeans"]`` (labels, bounds,
the per-cluster exact sums of the last assignment); :func:`labels` reads the labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from alscale.index.exact import combine_exact_sums, sq_dist_rows
from alscale.strategies import clustering_assign as ca
from alscale.strategies.shards import Shards, ShardState, shard_op

logger = logging.getLogger(__name__)

_OP = "alscale.strategies.clustering."
_ROWS_PER_BLOCK = 16384
_KEY = "kmeans"
#: Relative gap between the bounds that certifies a row's cluster (float64 distances are
#: accurate to ~1e-15 relative; the margin keeps every decision far from rounding).
_MARGIN = 1e-9


def canonical_argmin(x_N_D: np.ndarray, centers_K_D: np.ndarray, x_sq_N: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Index of the canonical nearest center of each row (ties: lower index) and its
    canonical squared distance; float32 GEMMs prune, float64 decides (module docstring;
    the kernels are :mod:`alscale.strategies.clustering_assign`). ``x_sq_N``: the rows'
    squared norms (float32), when the caller keeps them."""
    x = np.ascontiguousarray(x_N_D, dtype=np.float32)
    x_sq = ca.sq_norms(x) if x_sq_N is None else x_sq_N
    a = ca.assign(x, x_sq, ca.prepare(centers_K_D, float(x_sq.max(initial=0.0))), canonical_d2=True)
    return a.labels_N, a.d2_N


# -- shard state and ops --------------------------------------------------------------------

@dataclass
class KMeansShard:
    """One shard's k-means state: its rows (float32) and their squared norms, each row's
    cluster ``labels_N``, Hamerly's bounds ``upper_N`` / ``lower_N`` (true distances)
    against ``centers_K_D`` (float32, the last assignment's), and per cluster the exact
    column sums of its rows on the shard's one grid (updated by the rows that move)."""

    x_N_D: np.ndarray
    x_sq_N: np.ndarray
    labels_N: np.ndarray | None = None
    upper_N: np.ndarray | None = None
    lower_N: np.ndarray | None = None
    centers_K_D: np.ndarray | None = None
    sums: dict[int, list] = field(default_factory=dict)
    grid: tuple[np.ndarray, int] | None = None


class AssignResult(NamedTuple):
    """What one assignment pass returns to the coordinator: rows that changed cluster,
    rows per cluster ``counts_K``, and the exact column-sum parts of every non-empty
    cluster ``[(cluster, exact_column_sums(rows)), ...]``."""

    changed: int
    counts_K: np.ndarray
    sums: list


class Members(NamedTuple):
    """A cluster's rows on one shard: ids, embeddings (float32), not-pickable flags."""

    row_ids_R: np.ndarray
    embeddings_R_D: np.ndarray
    taken_R: np.ndarray


def _emb(state: ShardState) -> np.ndarray:
    if state.embeddings_N_D is None:
        raise ValueError("k-means needs embeddings, but this shard has none")
    return state.embeddings_N_D


def _km(state: ShardState) -> KMeansShard:
    km = state.strategy_state.get(_KEY)
    if km is None:
        x = np.ascontiguousarray(_emb(state), dtype=np.float32)
        km = state.strategy_state[_KEY] = KMeansShard(x, ca.sq_norms(x))
    return km


def labels(state: ShardState, required: bool = True) -> np.ndarray | None:
    """This shard's k-means labels (after :func:`kmeans`); None when there are none and
    not ``required``."""
    km = state.strategy_state.get(_KEY)
    if km is None or km.labels_N is None:
        if not required:
            return None
        raise RuntimeError("no k-means labels on this shard; run clustering.kmeans first")
    return km.labels_N


def _moves(old_K_D: np.ndarray, new_K_D: np.ndarray) -> np.ndarray:
    """Upper bounds on the true distance each center moved."""
    return np.sqrt(sq_dist_rows(old_K_D, new_K_D)) * (1.0 + 1e-12) + 1e-300


def _stale_rows(km: KMeansShard, centers: np.ndarray) -> np.ndarray:
    """Move the bounds to ``centers``; the rows whose cluster may change."""
    delta = _moves(km.centers_K_D, centers)
    top = int(np.argmax(delta))
    second = float(np.max(np.delete(delta, top), initial=0.0))
    km.upper_N += delta[km.labels_N]
    km.lower_N -= np.where(km.labels_N == top, second, float(delta[top]))
    open_ = np.flatnonzero(km.upper_N * (1.0 + _MARGIN) >= km.lower_N)
    # Tighten u to the row's distance to its own center first: a float32 sum of D squares is
    # within a relative (D + 4)·2^-23 of the true value (all terms non-negative).
    up = 1.0 + (centers.shape[1] + 4) * 2.0**-22
    for s0 in range(0, open_.shape[0], _ROWS_PER_BLOCK):
        o = open_[s0:s0 + _ROWS_PER_BLOCK]
        diff = km.x_N_D[o] - centers[km.labels_N[o]]
        km.upper_N[o] = np.sqrt(np.einsum("nd,nd->n", diff, diff).astype(np.float64) * up) * (1.0 + 1e-12)
    return open_[km.upper_N[open_] * (1.0 + _MARGIN) >= km.lower_N[open_]]


@shard_op
def km_assign(state: ShardState, centers_K_D: np.ndarray) -> AssignResult:
    """Assign every row to its canonical nearest center (Hamerly's bounds skip the rows that
    cannot move; module doc); return what the coordinator needs for the new centers."""
    km = _km(state)
    centers = np.ascontiguousarray(centers_K_D, dtype=np.float32)
    k, n = centers.shape[0], km.x_N_D.shape[0]
    old = km.labels_N
    if old is None or km.centers_K_D is None or km.centers_K_D.shape != centers.shape:
        a = ca.assign(km.x_N_D, km.x_sq_N, ca.prepare(centers, float(km.x_sq_N.max(initial=0.0))))
        changed = n if old is None or old.shape != a.labels_N.shape else int(np.count_nonzero(old != a.labels_N))
        km.labels_N, km.upper_N = a.labels_N, np.sqrt(a.d2_N) * (1.0 + 1e-12)
        km.lower_N = np.sqrt(a.lower_sq_N)
        km.sums = {}
        _update_sums(km, np.arange(n), None, km.labels_N)
    else:
        rows = _stale_rows(km, centers)
        a = ca.assign(km.x_N_D[rows], km.x_sq_N[rows], ca.prepare(centers, float(km.x_sq_N.max(initial=0.0))))
        new_labels = old.copy()
        new_labels[rows] = a.labels_N
        km.upper_N[rows] = np.sqrt(a.d2_N) * (1.0 + 1e-12)
        km.lower_N[rows] = np.sqrt(a.lower_sq_N)
        moved = rows[a.labels_N != old[rows]]
        changed = int(moved.shape[0])
        _update_sums(km, moved, old[moved], new_labels[moved])
        km.labels_N = new_labels
    km.centers_K_D = centers
    counts = np.bincount(km.labels_N, minlength=k)
    return AssignResult(changed, counts, _cluster_sums(km, counts))


def _grid(km: KMeansShard) -> tuple[np.ndarray, int]:
    """The shard's one exact-sum grid (column exponents for all its rows, and their count):
    sums over any subset of rows, added and subtracted on it, stay exact."""
    if km.grid is None:
        from alscale.index.exact import grid_exponents

        n = max(1, km.x_N_D.shape[0])
        abs_max = np.zeros(km.x_N_D.shape[1], dtype=np.float32)
        for r0 in range(0, km.x_N_D.shape[0], _ROWS_PER_BLOCK):
            np.maximum(abs_max, np.abs(km.x_N_D[r0:r0 + _ROWS_PER_BLOCK]).max(axis=0), out=abs_max)
        km.grid = (grid_exponents(abs_max, n), n)
    return km.grid


def _levels_add(a: list[np.ndarray], b: list[np.ndarray], sign: float) -> list[np.ndarray]:
    """``a + sign·b`` level by level (integers below 2^52 on one grid: exact)."""
    out = [v.copy() for v in a] + [np.zeros_like(b[0]) for _ in range(len(b) - len(a))]
    for i, v in enumerate(b):
        out[i] += sign * v
    return out


def _update_sums(km: KMeansShard, rows: np.ndarray, old: np.ndarray | None, new: np.ndarray) -> None:
    """Exact per-cluster column sums after ``rows`` moved from ``old`` to ``new`` clusters
    (``old`` None: every row is new)."""
    from alscale.index.exact import exact_grid_sums

    exps, n = _grid(km)
    moves = [(new, 1.0)] if old is None else [(old, -1.0), (new, 1.0)]
    for lab, sign in moves:
        o = np.argsort(lab, kind="stable")
        cuts = np.flatnonzero(np.diff(lab[o])) + 1
        for grp in np.split(o, cuts) if o.size else []:
            j = int(lab[grp[0]])
            part = exact_grid_sums(km.x_N_D[rows[grp]], exps, n)
            km.sums[j] = _levels_add(km.sums[j], part, sign) if j in km.sums else \
                [sign * v for v in part]


def _cluster_sums(km: KMeansShard, counts: np.ndarray) -> list:
    """Exact column sums per non-empty cluster, as :func:`exact_column_sums` parts."""
    exps, n = _grid(km)
    return [(int(j), (exps, n, km.sums[int(j)])) for j in np.flatnonzero(counts)]


class ClusterLabels(NamedTuple):
    """Rows of one shard with their cluster and whether they are labelled."""

    row_ids_R: np.ndarray
    labels_R: np.ndarray
    labeled_R: np.ndarray


class ClusterCounts(NamedTuple):
    """One shard's rows per cluster and labelled rows per cluster."""

    rows_K: np.ndarray
    labeled_K: np.ndarray


@shard_op(mutates=False)
def km_labels(state: ShardState, row_ids: np.ndarray | None = None) -> ClusterLabels:
    """The requested rows (all rows when None) with their clusters."""
    lab = labels(state)
    pos = np.arange(state.row_ids_N.shape[0]) if row_ids is None else np.flatnonzero(np.isin(state.row_ids_N, row_ids))
    return ClusterLabels(state.row_ids_N[pos], lab[pos], state.labeled_N[pos])


@shard_op(mutates=False)
def km_counts(state: ShardState, k: int) -> ClusterCounts:
    """Rows per cluster and labelled rows per cluster, ``[k]`` each."""
    lab = labels(state)
    return ClusterCounts(np.bincount(lab, minlength=k), np.bincount(lab[state.labeled_N], minlength=k))


@shard_op(mutates=False)
def km_members(state: ShardState, cluster: int) -> Members:
    """This shard's rows in ``cluster``."""
    pos = np.flatnonzero(labels(state) == cluster)
    return Members(state.row_ids_N[pos], np.asarray(_emb(state)[pos], dtype=np.float32), ~state.candidates_N[pos])


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
        changed = sum(r.changed for r in res)
        counts = np.sum([r.counts_K for r in res], axis=0)
        by_cluster: dict[int, list] = {}
        for r in res:
            for j, part in r.sums:
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
