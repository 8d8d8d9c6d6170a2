"""Byte sizes as people write them: ``4GiB``, ``512MB``, ``1e9`` (job fields such as
``runtime.memory_budget``), and back (:func:`human`). Standard library only."""

from __future__ import annotations

import math
import re
from typing import Any

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_bytes(value: Any) -> int | None:
    """``4GiB`` / ``512MB`` / ``1e9`` / an int -> bytes; None when it is not a size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if value > 0 and math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        return None
    n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    return int(n) if n >= 1 else None


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
