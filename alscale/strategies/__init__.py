"""Selection strategies: pure functions over the :class:`Shards` seam (no I/O, Ray or model).

``registry`` maps names to strategies; ``scores`` holds the per-row kernels; ``topk`` the
exact sharded top-k; ``shards`` the seam and its in-memory implementation.
"""

from __future__ import annotations

from alscale.strategies.registry import check_options, get_strategy, strategy_names
from alscale.strategies.shards import FanoutShards, InProcessFanout, Shards, ShardState, merge_topk
from alscale.strategies.topk import select_by_score

__all__ = [
    "FanoutShards",
    "InProcessFanout",
    "ShardState",
    "Shards",
    "check_options",
    "get_strategy",
    "merge_topk",
    "select_by_score",
    "strategy_names",
]
