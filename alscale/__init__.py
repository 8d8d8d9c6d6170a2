"""alscale: Ray-distributed active-learning acquisition over million-row Arrow pools."""

from __future__ import annotations

__version__ = "0.1.0"

from alscale.api import select
from alscale.types import Selection

__all__ = ["Selection", "__version__", "select"]
