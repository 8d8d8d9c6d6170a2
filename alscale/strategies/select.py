"""One entry point for every strategy: ``run_strategy(shards, name, budget, ...)``.

Score-based strategies go through the exact sharded top-k
(:func:`~alscale.strategies.topk.select_by_score`); ``"loop"`` strategies through their own
loop (the spec's ``select``). ``strategy`` is a name, an import path or a spec. Callers (the
coordinator, the in-memory API) use only this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alscale.strategies import registry
from alscale.strategies.shards import Shards
from alscale.strategies.topk import select_by_score
from alscale.types import Selection
from alscale.validation import check_budget


def run_strategy(
    shards: Shards,
    strategy: Any,
    budget: int,
    *,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    round: int = 0,
) -> Selection:
    """Select ``min(budget, unlabelled)`` rows of ``shards`` with ``strategy``.

    Labelled rows must already be excluded (``shards.exclude``). ``indices_B`` of the
    result are ``row_id`` values in pick order.
    """
    info = registry.get_strategy(strategy)
    budget = check_budget(budget)
    opts = registry.check_options(info, options or {})
    if info.kind == "loop":
        return info.select_fn(shards, budget, options=opts, seed=seed, round=round)
    return select_by_score(shards, info, budget, options=opts, seed=seed, round=round)
