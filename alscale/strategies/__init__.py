"""Selection strategies: pure functions over the :class:`Shards` seam (no I/O, Ray or model).

``registry`` maps names to strategies; ``scores`` holds the per-row kernels; ``topk`` the
exact sharded top-k; ``shards`` the seam (the ``Shards`` protocol, its typed results ``TopK`` and
``Rows``, ``ShardState``) and its in-memory implementation.
"""

from __future__ import annotations

from alscale.strategies.registry import check_options, get_strategy, requirements, strategy_names
from alscale.strategies.select import run_strategy
from alscale.strategies.shards import (
    FanoutShards,
    InProcessFanout,
    LastingState,
    Rows,
    Shards,
    ShardState,
    TopK,
    merge_topk,
    shard_op,
)
from alscale.strategies.topk import select_by_score

__all__ = [
    "FanoutShards",
    "InProcessFanout",
    "LastingState",
    "Rows",
    "ShardState",
    "Shards",
    "TopK",
    "check_options",
    "get_strategy",
    "merge_topk",
    "requirements",
    "run_strategy",
    "select_by_score",
    "shard_op",
    "strategy_names",
]
