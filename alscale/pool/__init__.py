"""Pools on Arrow IPC / Parquet: open and validate, plan shards, read shards zero-copy,
write atomically, and make pools (synthetic, MNIST).

Imports only pyarrow, numpy and the standard library (DESIGN section 2).
"""

from __future__ import annotations

from alscale.pool.arrays import pool_table
from alscale.pool.info import PoolInfo, describe_pool, open_pool
from alscale.pool.labeled import read_labeled
from alscale.pool.mnist import mnist_pool
from alscale.pool.read import read_shard
from alscale.pool.shards import plan_shards
from alscale.pool.synth import synth_pool
from alscale.pool.write import PoolWriter, write_table

__all__ = [
    "PoolInfo",
    "PoolWriter",
    "describe_pool",
    "mnist_pool",
    "open_pool",
    "plan_shards",
    "pool_table",
    "read_labeled",
    "read_shard",
    "synth_pool",
    "write_table",
]
