"""Pure kernels of the composed selection (:mod:`alscale.strategies.objective`): arrays in, arrays out.

- predicates of the filters (:func:`predicate_mask`), the first rule a row passes
  (:func:`first_rule`);
- the normalisations that put scores on a common scale, exact over the whole pool given
  the pool-wide statistics the coordinator merges (:func:`midrank`, :func:`minmax`), and the
  weighted sum (:func:`combine`);
- the greedy's key (:func:`key_of`): the combined score, plus ``w`` times the distance to the
  nearest center (k-center), or minus infinity inside the radius of a center (threshold).
  The same function gives the shards' upper bounds (from an upper bound of the squared
  distance) and the coordinator's exact keys (from the canonical one): every operation in
  it is monotone and correctly rounded, so a larger squared distance never gives a smaller
  key for k-center, nor turns a far row near for the threshold.

Shapes: N rows, R filter rules, M merged values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Key kinds of the greedy: the combined score alone; plus w·distance; -inf within r of a center.
KEY_KINDS = ("none", "kcenter", "threshold")


def predicate_mask(values_N: np.ndarray, op: str, value: Any) -> np.ndarray:
    """``values op value`` per row (bool ``[N]``); ``between`` is inclusive, NaN fails every
    comparison but ``!=`` and ``not in``."""
    v = values_N
    if op == "==":
        return np.asarray(v == value, dtype=bool).reshape(v.shape)
    if op == "!=":
        return np.asarray(v != value, dtype=bool).reshape(v.shape)
    if op in ("in", "not in"):
        hit = np.isin(v, np.asarray(value, dtype=v.dtype if v.dtype != object else object))
        return hit if op == "in" else ~hit
    if op == "between":
        return (v >= value[0]) & (v <= value[1])
    return {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[op](v, value)


def first_rule(masks_R_N: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Index of the first rule each row passes, -1 for none (int32 ``[N]``); with no rules every
    row passes rule ``-2`` ("no filter")."""
    out = np.full(n, -1 if masks_R_N else -2, dtype=np.int32)
    for r in range(len(masks_R_N) - 1, -1, -1):  # earlier rules overwrite later ones
        out[masks_R_N[r]] = r
    return out


def midrank(values_N: np.ndarray, sorted_M: np.ndarray) -> np.ndarray:
    """Mid-rank of each value among the ``M`` pool values ``sorted_M`` (ascending), scaled to
    [0, 1]: ``(#below + (#equal - 1) / 2) / (M - 1)``; equal values get equal ranks. 0.5 when
    ``M <= 1``. Exact: counts are integers, one division per row."""
    m = sorted_M.shape[0]
    if m <= 1:
        return np.full(values_N.shape[0], 0.5)
    order = np.argsort(values_N, kind="stable")  # sorted needles: a cache-friendly search
    v = values_N[order]
    rank = np.empty(values_N.shape[0], dtype=np.float64)
    lo = np.searchsorted(sorted_M, v, side="left")
    hi = np.searchsorted(sorted_M, v, side="right")
    rank[order] = (lo + (hi - lo - 1) * 0.5) / float(m - 1)
    return rank


def minmax(values_N: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(v - lo) / (hi - lo)``; 0 everywhere when ``hi == lo``."""
    if not hi > lo:
        return np.zeros(values_N.shape[0])
    return (np.asarray(values_N, np.float64) - lo) / (hi - lo)


def combine(parts: Sequence[np.ndarray], weights: Sequence[float], n: int) -> np.ndarray:
    """``sum_i weights[i] * parts[i]`` in component order (float64 ``[N]``; zeros with no parts)."""
    out = np.zeros(n, dtype=np.float64)
    for w, p in zip(weights, parts, strict=True):
        out += float(w) * np.asarray(p, np.float64)
    return out


def key_of(s_N: np.ndarray, d2_N: np.ndarray | None, key: tuple) -> np.ndarray:
    """The greedy's key of rows with combined score ``s`` and squared distance ``d2`` to the
    nearest center (``inf``: no center), for ``key`` = ``("none",)``, ``("kcenter", w,
    with_scores)`` (``s + w * sqrt(d2)``; without scores ``w * sqrt(d2)``) or ``("threshold", r2)``
    (``s`` where ``d2 >= r2``, else ``-inf``)."""
    kind = key[0]
    if kind == "none":
        return np.asarray(s_N, np.float64)
    d2 = np.asarray(d2_N, np.float64)
    if kind == "kcenter":
        base = np.asarray(s_N, np.float64) if key[2] else np.zeros(d2.shape[0])
        return base + float(key[1]) * np.sqrt(np.maximum(d2, 0.0))
    if kind == "threshold":
        return np.where(d2 >= float(key[1]), np.asarray(s_N, np.float64), -np.inf)
    raise ValueError(f"unknown key kind {kind!r}; one of {', '.join(KEY_KINDS)}")


def upper_sq(mind_N: np.ndarray, eps: float) -> np.ndarray:
    """An upper bound of the canonical squared distance from a float32 one within ``eps``
    (float64; rounded up a little further so the bound survives the addition's rounding)."""
    return (np.asarray(mind_N, np.float64) + eps) * (1.0 + 2.0 ** -40)
