"""SoftRank acquisition (Kirsch et al., "Stochastic Batch Acquisition", TMLR 2023), exact over shards.

The key of a row is ``-beta * log(r) + g``: ``r`` its 1-based rank by the base score among
the candidates of the *whole pool* (ties: the lower ``row_id`` ranks first), ``g`` its keyed
Gumbel noise; the top-B rows by key are a sample without replacement with ``p ∝ r^-beta``.
No shard knows a global rank, so the key is certified instead of computed per row:

1. each shard offers its top-``m`` rows by an upper bound of the key — the global rank is
   at least the local rank ``l``, so ``U = -beta * log(l) + g`` bounds the key — and the
   largest ``U`` of the rows it did not offer (:func:`offer`);
2. one more fan-out counts, for every offered row, the candidates that rank before it on
   each shard (:func:`count_ahead`): the sum is its exact global rank, hence its exact key;
3. the batch is final when its worst key is strictly larger than every un-offered bound;
   otherwise ``m`` grows fourfold and the round is repeated.

Shard state: :class:`SoftrankOrder` (the candidates sorted by base score), built on first
use and rebuilt when the base score or the candidates change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from alscale.strategies import noise, scores
from alscale.strategies import spec as _spec
from alscale.strategies.shards import Shards, ShardState, order_desc, shard_op, topk_order
from alscale.strategies.topk import StochasticOptions, stochastic_options
from alscale.types import Selection

logger = logging.getLogger(__name__)

_KEY = "softrank"
_OFFER = f"{__name__}.offer"
_COUNT = f"{__name__}.count_ahead"


@dataclass
class SoftrankOrder:
    """One shard's candidates by ``(-base score, row_id)``: ``order_N`` positions, for ``base_N``."""

    base_N: np.ndarray  # the base score array the order was built for (identity checked)
    order_N: np.ndarray


class Offer(NamedTuple):
    """One shard's offered rows (:func:`offer`): upper bounds of their keys, base scores,
    ids, and the largest bound of any row not offered (-inf when all were)."""

    upper_M: np.ndarray
    base_M: np.ndarray
    row_ids_M: np.ndarray
    bound: float


def _order(state: ShardState) -> np.ndarray:
    """The shard's candidates sorted by base score (cached in :class:`SoftrankOrder`)."""
    base = state.base_N
    if base is None:
        raise RuntimeError("softrank: compute_scores must run before its shard ops")
    st = state.strategy_state.get(_KEY)
    if st is None or st.base_N is not base:
        cand = np.flatnonzero(state.candidates_N)
        st = SoftrankOrder(base, cand[order_desc(base[cand], state.row_ids_N[cand])])
        state.strategy_state[_KEY] = st
    return st.order_N


@shard_op(mutates=False)  # its cache is a function of the state: rebuilt where missing
def offer(state: ShardState, m: int, beta: float, seed: int, round: int) -> Offer:
    """Top-``m`` rows by the upper bound ``U = -beta*log(local rank) + g`` of the key."""
    order = _order(state)
    local_rank = np.arange(1, order.shape[0] + 1, dtype=np.float64)
    ids = state.row_ids_N[order]
    upper = scores.softrank_keys(local_rank, noise.keyed_gumbel(seed, round, ids), beta)
    top = topk_order(upper, ids, m + 1)
    bound = float(upper[top[m]]) if top.shape[0] > m else -np.inf
    top = top[:m]
    return Offer(upper[top], state.base_N[order][top], ids[top], bound)


@shard_op(mutates=False)
def count_ahead(state: ShardState, base_scores_Q: np.ndarray, row_ids_Q: np.ndarray) -> np.ndarray:
    """For each query (base score, row_id): how many candidates here rank strictly before it
    (int64 ``[Q]``)."""
    order = _order(state)
    neg_sorted = -state.base_N[order]  # ascending
    ids_sorted = state.row_ids_N[order]
    q_neg = -np.asarray(base_scores_Q, np.float64)
    lo = np.searchsorted(neg_sorted, q_neg, side="left")  # strictly higher score
    hi = np.searchsorted(neg_sorted, q_neg, side="right")
    counts = lo.astype(np.int64)
    for i in np.flatnonzero(hi > lo):  # equal scores: rows with a lower id come first
        counts[i] += np.searchsorted(ids_sorted[lo[i]:hi[i]], row_ids_Q[i], side="left")
    return counts


def global_ranks(shards: Shards, base_scores_Q: np.ndarray, row_ids_Q: np.ndarray) -> np.ndarray:
    """1-based rank of each query row among all candidates of all shards (one fan-out)."""
    counts = shards.call(_COUNT, np.asarray(base_scores_Q, np.float64), np.asarray(row_ids_Q, np.int64))
    return 1 + np.sum(counts, axis=0)


def _offers(shards: Shards, m: int, beta: float, seed: int, round: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Every shard's offer, concatenated: (base_M, row_ids_M, the largest un-offered bound)."""
    parts = shards.call(_OFFER, int(m), float(beta), int(seed), int(round))
    base = np.concatenate([p.base_M for p in parts])
    ids = np.concatenate([p.row_ids_M for p in parts])
    return base, ids, float(max((p.bound for p in parts), default=-np.inf))


def select_softrank(shards: Shards, budget: int, *, options: dict[str, Any], seed: int = 0,
                    round: int = 0) -> Selection:
    """The exact Gumbel-top-``budget`` of the SoftRank key (module docstring); the shards'
    base scores are computed (``compute_scores``) and ``budget`` is at most the candidates."""
    beta = float(options["beta"])
    k = int(budget)
    if k == 0:
        return Selection(np.empty(0, np.int64), np.empty(0, np.float64), SPEC.name)
    m = 2 * k + 16
    while True:
        base_M, ids_M, bound = _offers(shards, m, beta, seed, round)
        ranks_M = global_ranks(shards, base_M, ids_M).astype(np.float64)
        keys_M = scores.softrank_keys(ranks_M, noise.keyed_gumbel(seed, round, ids_M), beta)
        pos = topk_order(keys_M, ids_M, k)
        # Every row not offered has key <= bound; the batch is certain when its worst key is
        # strictly larger (equal keys would need the row_id tie rule).
        if keys_M[pos[-1]] > bound:
            return Selection(ids_M[pos].astype(np.int64), keys_M[pos].astype(np.float64), SPEC.name)
        logger.debug("softrank: %d offered rows per shard were not enough; retrying with %d", m, 4 * m)
        m *= 4


SoftrankOptions: type[StochasticOptions] = stochastic_options("softrank", __name__)

# SoftRank's key needs global ranks (no per-row keys): no quotas; its select certifies the top-B.
SPEC = _spec.StrategySpec(
    "softrank", "stochastic", "Gumbel-top-k with p ∝ rank^-beta over the whole pool (Kirsch et al., TMLR 2023)",
    options_type=SoftrankOptions, needs=_spec.Needs(log_probs=True, min_samples=1),
    supports=_spec.Supports(quotas=False, keeps=("base_score",)), select=select_softrank)
