"""alscale: Ray-distributed active-learning acquisition over million-row Arrow pools."""

from __future__ import annotations

__version__ = "0.1.0"
