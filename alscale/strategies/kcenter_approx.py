"""k-center greedy per shard, then on the union (Malkomes et al., "Fast Distributed k-Center
Clustering with Outliers on Massive Data", NeurIPS 2015): ``kcenter_approx``.

The initial centers (labelled rows; with none, the exact first pick nearest to the mean)
are the exact loop's; each shard then picks ``budget - 1`` (or ``budget``) rows by exact
greedy on its own rows in one round trip (:func:`local_greedy`, the loop of
:mod:`alscale.strategies.kcenter_loop` in the shard's process), and the coordinator runs
exact greedy over the union. A constant-factor approximation of the k-center objective, not
the exact greedy selection; ``benchmarks/selection.py`` reports its coverage radius.
"""

from __future__ import annotations

import math
import time

import numpy as np

from alscale.errors import AlscaleError
from alscale.strategies.kcenter_loop import (
    KCenterResult,
    KCenterStats,
    center_page,
    greedy,
    labeled_centers,
    mean_first_pick,
)
from alscale.strategies.kcenter_shard import OP, KCenterInit
from alscale.strategies.shards import FanoutShards, InProcessFanout, Rows, Shards, ShardState, shard_op

_LOCAL = f"{__name__}.local_greedy"


@shard_op(mutates=False)  # the greedy runs on a copy of the shard's masks
def local_greedy(state: ShardState, budget: int, centers_L_D: np.ndarray, exclude_ids: np.ndarray,
                 backend: str) -> Rows:
    """Exact greedy on this shard's rows alone: the picks with their embeddings.

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
        return Rows(np.empty(0, np.int64), np.empty((0, emb.shape[1]), np.float32), None)
    local = FanoutShards(InProcessFanout([sub]))
    stats = KCenterStats(mode="local", backend=backend)
    ids, _ = greedy(local, min(budget, n_free), backend=backend, centers0=centers_L_D, take_labeled=False,
                    offer_rows=None, stats=stats)
    order = np.argsort(state.row_ids_N, kind="stable")
    return Rows(ids, emb[order[np.searchsorted(state.row_ids_N[order], ids)]], None)


def _initial_centers(shards: Shards, infos: list[KCenterInit], page: int, n_cand: int
                     ) -> tuple[np.ndarray, list[int], list[float]]:
    """The labelled rows' embeddings; with none, the first pick (from the mean) as the one
    center. Returns (centers_L_D, first pick ids, first pick scores)."""
    dim = int(infos[0].dim)
    labeled = labeled_centers(shards, infos, page, dim) if any(i.labeled for i in infos) else (
        np.empty((0, dim), np.float32))
    if labeled.shape[0]:
        return labeled, [], []
    row, emb = mean_first_pick(shards, infos, n_cand)
    return emb[None, :].astype(np.float32), [row], [math.inf]


def kcenter_approx(shards: Shards, budget: int, *, backend: str = "auto") -> KCenterResult:
    """Greedy per shard, then greedy on the union of the shards' picks (module docstring)."""
    t0 = time.perf_counter()
    rt0 = shards.round_trips
    stats = KCenterStats(mode="approx", backend=backend)
    page = center_page(shards)
    infos: list[KCenterInit] = shards.call(OP + "init", backend, None, True, page)
    n_cand = sum(int(i.candidates) for i in infos)
    k = min(int(budget), n_cand)
    if k == 0:
        return KCenterResult(np.empty(0, np.int64), np.empty(0, np.float64), stats)
    centers0, first_ids, first_scores = _initial_centers(shards, infos, page, n_cand)
    rest = k - len(first_ids)
    parts = shards.call(_LOCAL, rest, centers0, np.asarray(first_ids, np.int64), backend)
    union = FanoutShards(InProcessFanout([ShardState(np.concatenate([p.row_ids_R for p in parts]), None,
                                                     np.concatenate([p.embeddings_R_D for p in parts]))]))
    ids, scores = greedy(union, rest, backend=backend, centers0=centers0, take_labeled=False, offer_rows=None,
                         stats=stats)
    stats.round_trips = shards.round_trips - rt0
    stats.seconds["total"] = time.perf_counter() - t0
    return KCenterResult(
        np.concatenate([np.asarray(first_ids, np.int64), ids]),
        np.concatenate([np.asarray(first_scores, np.float64), scores]),
        stats,
    )
