"""``check_*`` helpers shared by the public functions (DESIGN §1.6: validate at the boundary).

Each raises :class:`~alscale.errors.AlscaleError` with one line naming the argument, the
offending value or position, and the fix. Kernels behind the public functions assume the
checks passed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alscale.errors import AlscaleError, short_repr


def check_budget(budget: Any, name: str = "budget") -> int:
    """A positive integer (bool is rejected)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise AlscaleError(f"{name} must be a positive integer; got {short_repr(budget)}")
    return int(budget)


def check_finite(array: np.ndarray, name: str, *, allow_neg_inf: bool = False) -> None:
    """All values finite (or -inf, with ``allow_neg_inf``); the error names the first bad position."""
    # Sum first: one pass, no N-sized boolean temporary in the common (valid) case.
    with np.errstate(all="ignore"):
        total = np.sum(array, dtype=np.float64)
    if np.isfinite(total) or (allow_neg_inf and total == -np.inf):
        return
    bad_mask = ~np.isfinite(array)
    if allow_neg_inf:
        bad_mask &= array != -np.inf
    bad = np.argwhere(bad_mask)
    if bad.shape[0] == 0:  # the sum overflowed but every value is finite
        return
    pos = tuple(int(i) for i in bad[0])
    raise AlscaleError(f"{name} has a non-finite value ({array[pos]}) at index {pos}; clean or drop that row")


def check_log_probs(log_probs: Any, name: str = "log_probs") -> np.ndarray:
    """``[N, C]`` or ``[N, K, C]`` finite floating log-probabilities -> a ``[N, K, C]`` view."""
    arr = np.asarray(log_probs)
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3:
        raise AlscaleError(f"{name} must be [N, C] or [N, K, C]; got shape {np.shape(log_probs)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise AlscaleError(f"{name} must hold floating log-probabilities; got dtype {arr.dtype}")
    if arr.shape[2] < 2:
        raise AlscaleError(f"{name} needs at least 2 classes on its last axis; got shape {arr.shape}")
    check_finite(arr, name, allow_neg_inf=True)  # log 0 = -inf is a valid log-probability
    if np.any(arr > 1e-3):
        raise AlscaleError(f"{name} must be natural-log probabilities (<= 0); got a value above 0; apply log_softmax")
    return arr


def check_embeddings(embeddings: Any, n_rows: int | None, name: str = "embeddings") -> np.ndarray:
    """``[N, D]`` finite floating embeddings with ``N == n_rows`` when given."""
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise AlscaleError(f"{name} must be [N, D]; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise AlscaleError(f"{name} must be floating; got dtype {arr.dtype}")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise AlscaleError(f"{name} has {arr.shape[0]} rows but log_probs has {n_rows}; they must match")
    check_finite(arr, name)
    return arr


def check_labeled_positions(labeled: Any, n_rows: int, name: str = "labeled") -> np.ndarray:
    """Labelled rows as int positions in ``[0, n_rows)`` or a boolean mask of length N."""
    if labeled is None:
        return np.empty(0, dtype=np.int64)
    arr = np.asarray(labeled)
    if arr.dtype == bool:
        if arr.shape != (n_rows,):
            raise AlscaleError(f"{name} mask must have shape ({n_rows},); got {arr.shape}")
        return np.flatnonzero(arr).astype(np.int64)
    arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise AlscaleError(f"{name} must be integer positions or a boolean mask; got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr >= n_rows))
    if bad.size:
        raise AlscaleError(f"{name}[{bad[0]}] = {arr[bad[0]]} is outside the pool of {n_rows} rows")
    return np.unique(arr)


def check_int_options(options: dict[str, Any], keys: tuple[str, ...], *, minimum: int = 1,
                      strategy: str | None = None) -> None:
    """Each of ``options[key]`` must be an integer (not a bool) >= ``minimum``."""
    where = f" of strategy {strategy}" if strategy else ""
    for key in keys:
        v = options[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise AlscaleError(f"option {key}{where} must be an integer >= {minimum}; got {short_repr(v)}")
