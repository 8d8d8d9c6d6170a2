"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022): typical rows of uncovered clusters,
for very small budgets (cold start) on good (e.g. self-supervised) embeddings.

As the paper and its reference code define it:

1. k-means of every row's embedding into ``min(|L| + B, max_clusters)`` clusters
   (:mod:`alscale.strategies.clustering`; the reference caps at 500);
2. clusters with at most ``min_cluster_size`` rows (5) are dropped; the rest are ordered
   by labelled rows ascending, then size descending (then cluster index);
3. pick t goes to cluster ``t mod (number of clusters)`` in that order: among the
   cluster's unlabelled, not yet picked rows, the most *typical* one —
   ``typicality(x) = 1 / (mean Euclidean distance from x to its k nearest neighbours + 1e-5)``
   with ``k = min(knn, n // 2)`` over those ``n`` rows (``knn`` = 20) — ties to the lower
   ``row_id``.

Sharded: the clustering is sharded; a chosen cluster's rows (bounded by the cluster size)
are gathered, ordered by ``row_id``, and their typicality computed in the coordinator in
float64, so the picks are the same for any sharding. The score of a pick is its typicality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from alscale.strategies import progress
from alscale.strategies import spec as _spec
from alscale.strategies.clustering import kmeans
from alscale.strategies.shards import Shards
from alscale.types import Selection
from alscale.validation import check_int_options

_OP = "alscale.strategies.clustering."
_BLOCK = 2048


def knn_mean_distance(x_N_D: np.ndarray, k: int, rows: np.ndarray | None = None,
                      dtype: type = np.float64) -> np.ndarray:
    """Mean Euclidean distance from each row (or each of ``rows``) to its ``k`` nearest other
    rows of ``x_N_D`` (float64 ``[N]``), in blocks (memory ``O(block * N)``), computed in ``dtype``."""
    x = np.asarray(x_N_D, dtype=dtype)
    n = x.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    sq = np.einsum("nd,nd->n", x, x)
    out = np.empty(rows.shape[0])
    for r0 in range(0, rows.shape[0], _BLOCK):
        r = rows[r0:r0 + _BLOCK]
        d2 = x[r] @ x.T
        d2 *= -2.0
        d2 += sq[r, None]
        d2 += sq[None, :]
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(r.shape[0]), r] = np.inf  # not its own neighbour
        part = np.partition(d2, k - 1, axis=1)[:, :k].astype(np.float64)
        out[r0:r0 + _BLOCK] = np.sqrt(part).mean(axis=1)
    return out


#: Rows whose float32 typicality is within this relative margin of the largest are recomputed
#: in float64 (on centered data float32 distances are accurate to ~1e-6 relative).
SCREEN_MARGIN = 1e-3


def typicality(x_N_D: np.ndarray, knn: int) -> np.ndarray:
    """TypiClust's typicality of each row among the rows ``x_N_D`` (float64 ``[N]``).

    Screened in float32 on the centered rows; the rows that can be the most typical (within
    :data:`SCREEN_MARGIN` of the largest) get their float64 value, so the argmax is the
    float64 one."""
    n = x_N_D.shape[0]
    if n == 1:
        return np.ones(1)
    k = max(1, min(knn, n // 2))
    from alscale.index.neighbours import self_knn_sq

    x = np.asarray(x_N_D, dtype=np.float64)
    x = x - x.mean(axis=0)
    # screen on the neighbour layer (exact k-NN of the float32 rows, cell-pruned; issue 16)
    out = 1.0 / (np.sqrt(self_knn_sq(x, k)).mean(axis=1) + 1e-5)
    top = np.flatnonzero(out >= out.max() * (1.0 - SCREEN_MARGIN))
    out[top] = 1.0 / (knn_mean_distance(x, k, rows=top) + 1e-5)
    return out


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    check_int_options(options, ("max_clusters", "knn", "kmeans_iters"))
    check_int_options(options, ("min_cluster_size",), minimum=0)
    return options


def select_typiclust(shards: Shards, budget: int, *, options: dict[str, Any], seed: int = 0,
                     round: int = 0) -> Selection:
    """Registry entry ``typiclust`` (module docstring). Labelled rows must be excluded already."""
    n_rows, n_cand = shards.n_rows(), shards.n_candidates()
    budget = min(budget, n_cand)
    if budget == 0:
        return Selection(np.empty(0, np.int64), np.empty(0), "typiclust")
    n_labeled = n_rows - n_cand
    k = int(min(n_labeled + budget, options["max_clusters"], n_cand))
    km = kmeans(shards, k, seed=seed, round=round, max_iters=options["kmeans_iters"])
    counts = km["counts"]
    labeled = np.sum([c.labeled_K for c in shards.call(_OP + "km_counts", k)], axis=0)
    nonempty = np.flatnonzero(counts > 0)
    big = counts[nonempty] > options["min_cluster_size"]

    def ordered(cl: np.ndarray) -> np.ndarray:
        return cl[np.lexsort((cl, -counts[cl], labeled[cl]))]

    # The reference's clusters first; when they run out of rows, the small ones (same order).
    orders = [ordered(nonempty[big]), ordered(nonempty[~big])]
    picked: set[int] = set()
    members: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    ids_B: list[int] = []
    scores_B: list[float] = []
    for order in orders:
        exhausted: set[int] = set()
        t = 0
        while len(ids_B) < budget and len(exhausted) < order.size:
            c = int(order[t % order.size])
            t += 1
            if c in exhausted:
                continue
            if c not in members:
                parts = shards.call(_OP + "km_members", c)
                ids = np.concatenate([p.row_ids_R for p in parts])
                emb = np.concatenate([p.embeddings_R_D for p in parts])
                free = ~np.concatenate([p.taken_R for p in parts])
                srt = np.argsort(ids[free], kind="stable")
                members[c] = (ids[free][srt], emb[free][srt])
            ids, emb = members[c]
            avail = np.fromiter((int(r) not in picked for r in ids), dtype=bool, count=ids.shape[0])
            if not avail.any():
                exhausted.add(c)
                continue
            typ = typicality(emb[avail], options["knn"])
            best = int(np.flatnonzero(typ == typ.max())[0])  # rows in row_id order: ties to the lower id
            row = int(ids[avail][best])
            picked.add(row)
            ids_B.append(row)
            scores_B.append(float(typ[best]))
            progress.advance()
    return Selection(np.asarray(ids_B, np.int64), np.asarray(scores_B, np.float64), "typiclust")


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class TypiClustOptions(_spec.StrategyOptions):
    """Options of ``typiclust`` (checked by :func:`check_options`)."""

    max_clusters: int = 500
    knn: int = 20
    min_cluster_size: int = 5
    kmeans_iters: int = 100

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


SPEC = _spec.StrategySpec(
    "typiclust", "loop", "most typical row of each uncovered k-means cluster (Hacohen et al., ICML 2022)",
    options_type=TypiClustOptions, needs=_spec.Needs(log_probs=False, embeddings=True),
    supports=_spec.Supports(keeps=("embeddings",)), select=select_typiclust)

