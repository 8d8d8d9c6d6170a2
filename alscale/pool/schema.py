"""Column types of a pool (DESIGN section 4) and their checks.

Known columns::

    row_id     int64, unique
    features   fixed_size_list<float32>[D]
    log_probs  fixed_size_list<float32>[C]                         (K = 1)
               fixed_size_list<fixed_size_list<float32>[C]>[K]     (K MC samples / members)
    embedding  fixed_size_list<float32>[E]
    label      any integer type (optional)
    image      binary: encoded image bytes (PNG, JPEG ...), decoded in the shard workers
    path       string: an image file per row (absolute, a URI, or relative to the pool's
               directory), read and decoded in the shard workers

float16 / float64 list values are accepted too (read as float32; only float32 is zero-copy).
``image`` or ``path`` stands in for ``features`` as the model's input (at most one of them).
Other columns are allowed and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from alscale.errors import PoolError

ROW_ID = "row_id"
FEATURES = "features"
LOG_PROBS = "log_probs"
EMBEDDING = "embedding"
LABEL = "label"
IMAGE = "image"
PATH = "path"
DATA_COLUMNS = (FEATURES, LOG_PROBS, EMBEDDING, LABEL)
MEDIA_COLUMNS = (IMAGE, PATH)

_FLOAT_TYPES = (pa.float16(), pa.float32(), pa.float64())


@dataclass(frozen=True)
class ColumnLayout:
    """Dimensions of the known columns of one file (``None``: column absent)."""

    feature_dim: int | None
    n_classes: int | None
    n_samples: int | None
    embedding_dim: int | None
    has_label: bool
    media: str | None = None  # "image" or "path" when the pool holds raw images


def _is_float(t: pa.DataType) -> bool:
    return any(t.equals(f) for f in _FLOAT_TYPES)


def _vector_dim(field: pa.Field, what: str, where: str) -> int:
    """D of a ``fixed_size_list<float>[D]`` field, else a PoolError naming the fix."""
    t = field.type
    if pa.types.is_fixed_size_list(t) and _is_float(t.value_type) and t.list_size > 0:
        return int(t.list_size)
    raise PoolError(f"pool {where}: column '{field.name}' has type {t}, expected "
                    f"fixed_size_list<float32>[{what}]; store it with "
                    f"pa.FixedSizeListArray.from_arrays(values, {what}) "
                    "(see alscale.pool.pool_table)")


def _log_probs_dims(field: pa.Field, where: str) -> tuple[int, int]:
    """(K, C) of a log_probs field: list<float>[C] -> (1, C); list<list<float>[C]>[K] -> (K, C)."""
    t = field.type
    if pa.types.is_fixed_size_list(t) and t.list_size > 0:
        inner = t.value_type
        if _is_float(inner):
            return 1, int(t.list_size)
        if (pa.types.is_fixed_size_list(inner) and _is_float(inner.value_type)
                and inner.list_size > 0):
            return int(t.list_size), int(inner.list_size)
    raise PoolError(f"pool {where}: column 'log_probs' has type {t}, expected "
                    "fixed_size_list<float32>[C] or "
                    "fixed_size_list<fixed_size_list<float32>[C]>[K] "
                    "(natural-log probabilities); build it with alscale.pool.pool_table")


def column_layout(schema: pa.Schema, where: str) -> ColumnLayout:
    """Check the known columns of ``schema`` (one file, shown as ``where``); return their dims."""
    try:
        names = schema.names
    except UnicodeDecodeError:
        raise PoolError(f"pool {where}: a column name in its schema is not valid UTF-8, so the file is corrupt; "
                        "rewrite it with alscale.pool.write_table") from None
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PoolError(f"pool {where}: column '{dupes[0]}' appears more than once; "
                        "keep one column per name")
    if ROW_ID not in names:
        raise PoolError(f"pool {where}: column 'row_id' is missing; add an int64 column "
                        "'row_id' with one unique id per row")
    rid = schema.field(ROW_ID).type
    if not rid.equals(pa.int64()):
        raise PoolError(f"pool {where}: column 'row_id' has type {rid}, expected int64; "
                        "cast it with pyarrow.compute.cast(column, pa.int64())")
    feature_dim = _vector_dim(schema.field(FEATURES), "D", where) if FEATURES in names else None
    n_samples = n_classes = None
    if LOG_PROBS in names:
        n_samples, n_classes = _log_probs_dims(schema.field(LOG_PROBS), where)
    embedding_dim = _vector_dim(schema.field(EMBEDDING), "E", where) if EMBEDDING in names else None
    has_label = LABEL in names
    if has_label and not pa.types.is_integer(schema.field(LABEL).type):
        raise PoolError(f"pool {where}: column 'label' has type {schema.field(LABEL).type}, "
                        "expected an integer class index; map the labels to 0..C-1 integers")
    media = None
    for name, ok, want in ((IMAGE, pa.types.is_binary, "binary (encoded image bytes)"),
                           (PATH, pa.types.is_string, "string (one image file per row)")):
        if name not in names:
            continue
        t = schema.field(name).type
        if not (ok(t) or (name == IMAGE and pa.types.is_large_binary(t))
                or (name == PATH and pa.types.is_large_string(t))):
            raise PoolError(f"pool {where}: column '{name}' has type {t}, expected {want}; "
                            f"store it as pa.array(values, pa.{'binary' if name == IMAGE else 'string'}())")
        if media is not None:
            raise PoolError(f"pool {where}: columns 'image' and 'path' are both present; keep one image source")
        media = name
    return ColumnLayout(feature_dim, n_classes, n_samples, embedding_dim, has_label, media)


_DESCRIBE = {
    "feature_dim": (FEATURES, "dimension D"),
    "n_classes": (LOG_PROBS, "number of classes C"),
    "n_samples": (LOG_PROBS, "number of samples K"),
    "embedding_dim": (EMBEDDING, "dimension E"),
    "has_label": (LABEL, "presence"),
    "media": ("image/path", "image source"),
}


def check_same_layout(first: ColumnLayout, first_where: str,
                      other: ColumnLayout, other_where: str) -> None:
    """All files of a dataset must agree on which known columns exist and their dims."""
    for attr, (column, what) in _DESCRIBE.items():
        a, b = getattr(first, attr), getattr(other, attr)
        if a == b:
            continue
        if a is None or b is None or isinstance(a, bool):
            has = first_where if a not in (None, False) else other_where
            lacks = other_where if has == first_where else first_where
            raise PoolError(f"pool {lacks}: column '{column}' is missing but {has} has it; "
                            "write every file of the pool with the same columns")
        raise PoolError(f"pool {other_where}: column '{column}' has {what} {b} but "
                        f"{first_where} has {a}; write every file of the pool with the same {what}")
