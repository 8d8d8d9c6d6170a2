"""Cluster-Margin (Citovsky et al., NeurIPS 2021): margin uncertainty, diversified by
clusters, for batches of 100k and more.

1. The embeddings are clustered once per job. The paper runs average-linkage HAC; at a
   million rows alscale uses **k-means clusters** (``n_clusters``, sharded and exact:
   :mod:`alscale.strategies.clustering`) — named as such, not HAC.
2. The ``k_m = ceil(margin_ratio * B)`` unlabelled rows of smallest margin (largest
   ``margin`` score ``1 − (p_1 − p_2)`` of the mean predictive) are taken by the exact
   sharded top-k.
3. Their clusters are visited round-robin, from the cluster with the fewest of these rows
   (ties: lower cluster index), taking one row per cluster per pass, in a uniformly random
   order within each cluster (keyed by ``(seed, round, row_id)``, so the same for any
   sharding), until B rows are chosen.

The score of a pick is its margin score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import noise
from alscale.strategies import spec as _spec
from alscale.strategies.clustering import kmeans
from alscale.strategies.shards import Shards
from alscale.types import Selection
from alscale.validation import check_int_options

_OP = "alscale.strategies.clustering."


def round_robin(cluster_Q: np.ndarray, key_Q: np.ndarray, row_ids_Q: np.ndarray, budget: int) -> np.ndarray:
    """Positions of the picks: clusters smallest first, one row per cluster per pass; within a
    cluster, by ``key`` descending then ``row_id``."""
    clusters, sizes = np.unique(cluster_Q, return_counts=True)
    visit = clusters[np.lexsort((clusters, sizes))]
    rank_of = np.empty(int(clusters.max()) + 1 if clusters.size else 0, dtype=np.int64)
    rank_of[visit] = np.arange(visit.shape[0])
    within = np.lexsort((row_ids_Q, -key_Q, cluster_Q))  # grouped by cluster, best first
    pos_in = np.empty(cluster_Q.shape[0], dtype=np.int64)
    start = 0
    for n in sizes:
        pos_in[within[start:start + n]] = np.arange(n)
        start += n
    crank = rank_of[cluster_Q]
    order = np.lexsort((crank, pos_in))  # pass by pass, clusters in visiting order
    return order[:budget]


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    check_int_options(options, ("n_clusters", "kmeans_iters"), strategy="cluster_margin")
    r = options["margin_ratio"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 1:
        raise AlscaleError(f"option margin_ratio of strategy cluster_margin must be a number >= 1; got {short_repr(r)}")
    return options


def select_cluster_margin(shards: Shards, budget: int, *, options: dict[str, Any], seed: int = 0,
                          round: int = 0) -> Selection:
    """Registry entry ``cluster_margin`` (module docstring)."""
    n_cand = shards.n_candidates()
    budget = min(budget, n_cand)
    if budget == 0:
        return Selection(np.empty(0, np.int64), np.empty(0), "cluster_margin")
    k = int(min(options["n_clusters"], shards.n_rows()))
    kmeans(shards, k, seed=seed, round=round, max_iters=options["kmeans_iters"])
    k_m = int(min(n_cand, math.ceil(options["margin_ratio"] * budget)))
    shards.compute_scores("margin", {}, seed, round)
    scores_Q, ids_Q = shards.topk(k_m)
    parts = shards.call(_OP + "km_labels", np.asarray(ids_Q, np.int64))
    all_ids = np.concatenate([p.row_ids_R for p in parts])
    all_lab = np.concatenate([p.labels_R for p in parts])
    o = np.argsort(all_ids)
    cluster_Q = all_lab[o][np.searchsorted(all_ids[o], ids_Q)]
    key_Q = noise.keyed_uniform(seed, round, np.asarray(ids_Q, np.int64))
    pick = round_robin(cluster_Q, key_Q, np.asarray(ids_Q, np.int64), budget)
    return Selection(np.asarray(ids_Q, np.int64)[pick], np.asarray(scores_Q, np.float64)[pick], "cluster_margin")


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterMarginOptions(_spec.StrategyOptions):
    """Options of ``cluster_margin`` (checked by :func:`check_options`)."""

    n_clusters: int = 100
    margin_ratio: float = 10.0
    kmeans_iters: int = 20

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


SPEC = _spec.StrategySpec(
    "cluster_margin", "loop",
    "lowest-margin rows round-robin over k-means clusters, smallest first (Citovsky et al., NeurIPS 2021)",
    options_type=ClusterMarginOptions, needs=_spec.Needs(log_probs=True, embeddings=True),
    supports=_spec.Supports(keeps=("log_probs", "embeddings")), select=select_cluster_margin)

