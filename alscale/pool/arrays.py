"""Conversions between numpy arrays and the pool's Arrow column types.

Both directions are zero-copy for contiguous float32 / int64 data:
``pool_table`` wraps numpy buffers in ``FixedSizeListArray``s, and ``vectors_to_numpy``
views a (possibly sliced, possibly nested) ``fixed_size_list<float32>`` array as an
``[n, D]`` or ``[n, K, C]`` read-only array. Slicing values by hand avoids arrow#35573
(``.values`` of a sliced FixedSizeListArray ignores the offset).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alscale.errors import PoolError
from alscale.pool.schema import EMBEDDING, FEATURES, LABEL, LOG_PROBS, ROW_ID


def flat_values(arr: pa.Array) -> pa.Array:
    """The child values of a FixedSizeListArray covering exactly its rows (offset respected).

    Unlike ``flatten()`` it keeps the slots of null lists, so positions map back to rows.
    """
    size = arr.type.list_size
    return arr.values.slice(arr.offset * size, len(arr) * size)


def _leaf(arr: pa.Array) -> tuple[list[pa.Array], list[int]]:
    """Every nesting level of a fixed-size-list array (outermost first) and the list sizes."""
    levels, sizes = [arr], []
    while pa.types.is_fixed_size_list(levels[-1].type):
        sizes.append(levels[-1].type.list_size)
        levels.append(flat_values(levels[-1]))
    return levels, sizes


def first_null_row(arr: pa.Array) -> int | None:
    """Index of the first row holding a null at any nesting level, or ``None``."""
    levels, sizes = _leaf(arr)
    best: int | None = None
    width = 1
    for depth, level in enumerate(levels):
        if level.null_count:
            valid = level.is_valid().to_numpy(zero_copy_only=False)
            row = int(np.argmin(valid)) // width
            best = row if best is None else min(best, row)
        if depth < len(sizes):
            width *= sizes[depth]
    return best


def vectors_to_numpy(arr: pa.Array) -> np.ndarray:
    """A null-free ``fixed_size_list<float>[D]`` (``[K][C]``) array as ``[n, D]`` (``[n, K, C]``).

    Zero-copy (a read-only view of the Arrow buffer) for every value type numpy shares;
    the caller converts float16/float64 to float32.
    """
    levels, sizes = _leaf(arr)
    values = levels[-1].to_numpy(zero_copy_only=True)
    return values.reshape([len(arr), *sizes])


def _fixed_size_list(x: np.ndarray, dims: tuple[int, ...]) -> pa.FixedSizeListArray:
    """Wrap a C-contiguous ``[N, *dims]`` array as nested FixedSizeListArrays (zero-copy)."""
    out: pa.Array = pa.array(x.reshape(-1))
    for size in reversed(dims):
        out = pa.FixedSizeListArray.from_arrays(out, size)
    return out


def _float_matrix(name: str, x: object, ndim: int, n_rows: int) -> np.ndarray:
    """``x`` as a C-contiguous float array of rank ``ndim`` with ``n_rows`` rows.

    float32 and float16 are kept (float16 is a deliberate compact storage choice);
    every other dtype is converted to float32.
    """
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise PoolError(f"pool_table: {name} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise PoolError(f"pool_table: {name} has {arr.shape[0]} rows but row_ids_N has {n_rows}; "
                        "pass one row per row id")
    if any(d < 1 for d in arr.shape[1:]):
        raise PoolError(f"pool_table: {name} has an empty trailing dimension (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise PoolError(f"pool_table: {name} must be numeric, got dtype {arr.dtype}")
    dtype = arr.dtype if arr.dtype in (np.float32, np.float16) else np.float32
    return np.ascontiguousarray(arr, dtype=dtype)


def _int_vector(name: str, x: object, n_rows: int | None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise PoolError(f"pool_table: {name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise PoolError(f"pool_table: {name} must hold integers, got dtype {arr.dtype}")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise PoolError(f"pool_table: {name} has {arr.shape[0]} rows but row_ids_N has {n_rows}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def pool_table(row_ids_N: np.ndarray, *,
               features_N_D: np.ndarray | None = None,
               log_probs_N_C: np.ndarray | None = None,
               log_probs_N_K_C: np.ndarray | None = None,
               embeddings_N_D: np.ndarray | None = None,
               labels_N: np.ndarray | None = None) -> pa.Table:
    """Build a pool table from numpy arrays, zero-copy for contiguous float32 / int64 input.

    Columns: ``row_id`` int64; ``features`` list<float32>[D]; ``log_probs`` list<float32>[C]
    from ``log_probs_N_C`` or list<list<float32>[C]>[K] from ``log_probs_N_K_C`` (give at most
    one); ``embedding`` list<float32>[E]; ``label`` int64. Row ids are not checked for
    uniqueness here (``open_pool`` does that).
    """
    ids_N = _int_vector("row_ids_N", row_ids_N, None)
    n = ids_N.shape[0]
    if log_probs_N_C is not None and log_probs_N_K_C is not None:
        raise PoolError("pool_table: pass log_probs_N_C (one pass) or log_probs_N_K_C "
                        "(K samples), not both")
    columns: dict[str, pa.Array] = {ROW_ID: pa.array(ids_N)}
    if features_N_D is not None:
        x = _float_matrix("features_N_D", features_N_D, 2, n)
        columns[FEATURES] = _fixed_size_list(x, x.shape[1:])
    if log_probs_N_C is not None:
        x = _float_matrix("log_probs_N_C", log_probs_N_C, 2, n)
        columns[LOG_PROBS] = _fixed_size_list(x, x.shape[1:])
    if log_probs_N_K_C is not None:
        x = _float_matrix("log_probs_N_K_C", log_probs_N_K_C, 3, n)
        columns[LOG_PROBS] = _fixed_size_list(x, x.shape[1:])
    if embeddings_N_D is not None:
        x = _float_matrix("embeddings_N_D", embeddings_N_D, 2, n)
        columns[EMBEDDING] = _fixed_size_list(x, x.shape[1:])
    if labels_N is not None:
        columns[LABEL] = pa.array(_int_vector("labels_N", labels_N, n))
    return pa.table(columns)
