"""Split a pool into contiguous, balanced row ranges (the unit a worker loads)."""

from __future__ import annotations

import logging
import operator

from alscale.errors import PoolError
from alscale.types import ShardSpec

log = logging.getLogger(__name__)


def plan_shards(pool: str, n_rows: int, n_shards: int) -> list[ShardSpec]:
    """``min(n_shards, n_rows)`` contiguous shards covering rows ``[0, n_rows)`` in order.

    Sizes differ by at most one; the earlier shards get the extra rows. ``n_rows == 0``
    gives ``[]``. Asking for more shards than rows logs a warning and gives one row each.
    """
    n_shards_int = _as_int(n_shards)
    if n_shards_int is None or n_shards_int < 1:
        raise PoolError(f"pool {pool}: n_shards must be an integer >= 1, got {n_shards!r}; "
                        "ask for at least one shard")
    n_rows_int = _as_int(n_rows)
    if n_rows_int is None or n_rows_int < 0:
        raise PoolError(f"pool {pool}: n_rows must be an integer >= 0, got {n_rows!r}; "
                        "pass PoolInfo.n_rows from open_pool")
    n_shards, n_rows = n_shards_int, n_rows_int
    if n_rows == 0:
        return []
    if n_shards > n_rows:
        log.warning("pool %s: %d shards requested for %d rows; using %d shards of one row",
                    pool, n_shards, n_rows, n_rows)
        n_shards = n_rows
    size, extra = divmod(n_rows, n_shards)
    specs: list[ShardSpec] = []
    start = 0
    for index in range(n_shards):
        stop = start + size + (1 if index < extra else 0)
        specs.append(ShardSpec(pool=pool, index=index, start=start, stop=stop))
        start = stop
    return specs


def _as_int(value: object) -> int | None:
    """``value`` as an int (numpy integers included), ``None`` if it is not an integer."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
