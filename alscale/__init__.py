"""alscale: Ray-distributed active-learning acquisition over million-row Arrow pools."""

from __future__ import annotations

__version__ = "0.1.0"

from alscale.api import select
from alscale.strategies.registry import register_strategy
from alscale.strategies.spec import Needs, StrategyOptions, StrategySpec, Supports
from alscale.types import Selection

__all__ = ["Needs", "Selection", "StrategyOptions", "StrategySpec", "Supports", "__version__", "register_strategy",
           "select"]
