"""Metadata columns of a pool read whole by the workers: group keys (e.g. quotas by ``source``,
``camera``, ``domain``) and the columns a composed selection filters on or scores by.

A group column is an integer or string Arrow column (dictionary-encoded ones included) with a
value on every row; a metadata column may also be a float or boolean one. :func:`check_group_column`
/ :func:`check_meta_column` check the schema once in the driver; :func:`read_column_values`
reads one shard's values in the workers.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alscale.errors import PoolError
from alscale.pool.arrays import first_null_row
from alscale.pool.info import open_files
from alscale.pool.read import _read_range, _row_ids
from alscale.pool.schema import ROW_ID
from alscale.types import ShardSpec


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    return None


def check_meta_column(pool: str, column: str, what: str) -> str:
    """``"int"``, ``"float"``, ``"bool"`` or ``"str"``: the kind of metadata column ``column`` of
    ``pool``; else a PoolError naming ``what`` (the job field), the column and the fix."""
    opened = open_files(pool)
    schema = opened.files[0].schema
    if column not in schema.names:
        raise PoolError(f"{what}: pool {opened.display} has no column '{column}' (columns: "
                        f"{', '.join(schema.names)}); name a column of the pool")
    kind = _kind(schema.field(column).type)
    if kind is None:
        raise PoolError(f"{what}: column '{column}' of pool {opened.display} has type {schema.field(column).type}; "
                        "a selection reads integer, float, boolean or string columns (one value per row)")
    return kind


def check_group_column(pool: str, column: str, what: str) -> str:
    """``"int"`` or ``"str"``: the kind of ``column`` in ``pool``; else a PoolError naming ``what``
    (the job field), the column and the fix."""
    opened = open_files(pool)
    schema = opened.files[0].schema
    if column not in schema.names:
        raise PoolError(f"{what}: pool {opened.display} has no column '{column}' (columns: "
                        f"{', '.join(schema.names)}); name an integer or string column of the pool")
    if column == ROW_ID:
        raise PoolError(f"{what}: column 'row_id' is unique per row, so every group would hold one row; name a "
                        "column that groups rows (e.g. source, camera, domain)")
    kind = _kind(schema.field(column).type)
    if kind not in ("int", "str"):
        raise PoolError(f"{what}: column '{column}' of pool {opened.display} has type "
                        f"{schema.field(column).type}; groups need an integer or string column (cast it, or "
                        "bin a float column into integers)")
    return kind


def read_column_values(spec: ShardSpec, column: str) -> np.ndarray:
    """The values of ``column`` for rows ``[spec.start, spec.stop)``: int64 ``[N]`` for an integer
    column, float64 for a float one, bool for a boolean one, an object array of ``str`` for a
    string one. A null is a PoolError naming its row_id."""
    pool = open_files(spec.pool)
    kind = check_meta_column(spec.pool, column, f"column '{column}'")
    parts = _read_range(pool.files, spec.start, spec.stop, [ROW_ID, column])
    ids_N = _row_ids(parts, spec.start)
    out = []
    offset = 0
    for f, table in parts:
        for chunk in table.column(column).chunks:
            if chunk.null_count:
                bad = first_null_row(chunk)
                raise PoolError(f"pool {f.where}: column '{column}' is null at row_id {int(ids_N[offset + bad])}; "
                                "groups need a value on every row: fill it (e.g. 'unknown') or drop the row")
            if pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_decode()
            if kind == "str":
                out.append(np.asarray(chunk.to_pylist(), dtype=object))
            else:
                dtype = {"int": np.int64, "float": np.float64, "bool": bool}[kind]
                out.append(chunk.to_numpy(zero_copy_only=False).astype(dtype))
            offset += len(chunk)
    if not out:
        return np.empty(0, dtype={"int": np.int64, "float": np.float64, "bool": bool}.get(kind, object))
    return np.concatenate(out)
