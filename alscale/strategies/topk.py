"""Score-based selection over :class:`~alscale.strategies.shards.Shards`: exact global top-k.

Deterministic scores (uncertainty, committee), uniform random and the per-row stochastic
strategies (Power, Softmax; Kirsch et al., TMLR 2023) reduce to one fan-out: every shard
returns its own best ``B`` unlabelled rows and the coordinator keeps the global best ``B``
(ties to the lower ``row_id``). A stochastic strategy whose key needs more than the row
(SoftRank's global rank, :mod:`alscale.strategies.softrank`) brings its own ``select``,
called after the base scores are computed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import registry, scores
from alscale.strategies import spec as _spec
from alscale.strategies.shards import Shards
from alscale.types import Selection

logger = logging.getLogger(__name__)


def select_by_score(
    shards: Shards,
    strategy: Any,
    budget: int,
    *,
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
    round: int = 0,
) -> Selection:
    """Pick ``min(budget, candidates)`` rows of the whole pool by a score-based strategy.

    Labelled rows must already be excluded (``shards.exclude``). Returns the picks in
    order with their ranking keys; ``indices_B`` holds ``row_id`` values.
    """
    info = registry.get_strategy(strategy)
    if info.kind == "loop":
        raise AlscaleError(f"strategy {info.name} is not score-based")
    if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget <= 0:
        raise AlscaleError(f"budget must be a positive integer; got {short_repr(budget)}")
    opts = registry.check_options(info, options or {})
    n_cand = shards.n_candidates()
    if budget > n_cand:
        logger.warning("budget %d exceeds the %d unlabelled rows; selecting all of them", budget, n_cand)
    k = min(int(budget), n_cand)
    shards.compute_scores(registry.wire(info), opts, seed, round)
    if not info.ranks_by_score:  # a key that needs more than the row: the strategy's own top-k
        return info.select_fn(shards, k, options=opts, seed=seed, round=round)
    keys_B, row_ids_B = shards.topk(k)
    return Selection(indices_B=row_ids_B.astype(np.int64), scores_B=keys_B.astype(np.float64), strategy=info.name)


# -- the ranking strategies' specs: random and the stochastic transforms ----------------
@dataclass(frozen=True)
class StochasticOptions(_spec.StrategyOptions):
    """``beta`` (> 0): the sharpness of the transform; ``base``: the score it transforms."""

    beta: float = 1.0
    base: str = "entropy"


def stochastic_options(name: str, module: str = __name__) -> type[StochasticOptions]:
    """The options dataclass of stochastic strategy ``name`` (its messages name it), defined
    in ``module``."""

    def check(cls: type, options: dict[str, Any]) -> dict[str, Any]:
        beta = options["beta"]
        if (isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating))
                or not math.isfinite(beta) or beta <= 0):
            raise AlscaleError(f"option beta of strategy {name} must be a positive number; got {short_repr(beta)}")
        options["beta"] = float(beta)
        options["base"] = registry.check_base(name, options["base"])
        return options

    return dataclass(frozen=True)(type(f"{name.title()}Options", (StochasticOptions,),
                                       {"check": classmethod(check), "__module__": module}))


PowerOptions = stochastic_options("power")
SoftmaxOptions = stochastic_options("softmax")

# min_samples / log_probs: those of the default base, entropy (the caller resolves the real base).
_STOCHASTIC_NEEDS = _spec.Needs(log_probs=True, min_samples=1)

SPECS = (
    _spec.StrategySpec("random", "random", "uniform random sample of the unlabelled rows (baseline)",
                       needs=_spec.Needs(log_probs=False), aliases=("uniform",),
                       supports=_spec.Supports(quotas=True, keeps=("base_score",))),
    _spec.StrategySpec("power", "stochastic",
                       "Gumbel-top-k with p ∝ score^beta, e.g. PowerBALD (Kirsch et al., TMLR 2023)",
                       options_type=PowerOptions, needs=_STOCHASTIC_NEEDS, keys=scores.power_keys,
                       supports=_spec.Supports(quotas=True, keeps=("base_score",))),
    _spec.StrategySpec("softmax", "stochastic", "Gumbel-top-k with p ∝ exp(beta * score) (Kirsch et al., TMLR 2023)",
                       options_type=SoftmaxOptions, needs=_STOCHASTIC_NEEDS,
                       keys=scores.softmax_keys, supports=_spec.Supports(quotas=True, keeps=("base_score",))),
)
