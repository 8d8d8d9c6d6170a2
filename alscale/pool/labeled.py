"""Read a labelled set: the ``row_id`` column of a ``.parquet`` or ``.csv`` file."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from alscale.errors import PoolError
from alscale.pool.location import Location, one_line, resolve
from alscale.pool.schema import ROW_ID

_INTEGER_TEXT = r"^\s*[+-]?[0-9]+\s*$"


def _open(loc: Location) -> pa.NativeFile:
    info = loc.fs.get_file_info(loc.path)
    if info.type != pafs.FileType.File:
        raise PoolError(f"labelled set {loc.display}: no such file; check the path "
                        "(a .parquet or .csv file with a 'row_id' column)")
    return loc.fs.open_input_file(loc.path)


def _missing(loc: Location, names: list[str]) -> PoolError:
    return PoolError(f"labelled set {loc.display}: column 'row_id' is missing (columns: "
                     f"{', '.join(names) or 'none'}); add a 'row_id' column of pool row ids")


def _from_csv(loc: Location) -> np.ndarray:
    try:
        with _open(loc) as f:
            table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(
                column_types={ROW_ID: pa.string()}))
    except PoolError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise PoolError(f"labelled set {loc.display}: cannot parse it as CSV "
                        f"({one_line(exc)}); write a header line with a 'row_id' column") from exc
    if ROW_ID not in table.column_names:
        raise _missing(loc, table.column_names)
    text = table.column(ROW_ID).combine_chunks()
    ok = pc.fill_null(pc.match_substring_regex(text, _INTEGER_TEXT), False)
    ok_N = ok.to_numpy(zero_copy_only=False)
    if ok_N.size and not ok_N.all():
        row = int(np.argmin(ok_N))
        value = text[row].as_py()
        shown = "an empty value" if not (value or "").strip() else f"value {value!r}"
        raise PoolError(f"labelled set {loc.display}: column 'row_id' has {shown} at line "
                        f"{row + 2} (row {row}); write one integer row id per line")
    try:
        return pc.cast(pc.utf8_trim_whitespace(text), pa.int64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid as exc:
        raise PoolError(f"labelled set {loc.display}: column 'row_id' has a value outside the "
                        f"int64 range ({one_line(exc)}); use pool row ids") from exc


def _from_parquet(loc: Location) -> np.ndarray:
    try:
        with _open(loc) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if ROW_ID not in names:
                raise _missing(loc, names)
            col = pf.read(columns=[ROW_ID]).column(0).combine_chunks()
    except PoolError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise PoolError(f"labelled set {loc.display}: cannot read it as Parquet "
                        f"({one_line(exc)}); rewrite it") from exc
    if col.null_count:
        row = int(np.argmin(col.is_valid().to_numpy(zero_copy_only=False)))
        raise PoolError(f"labelled set {loc.display}: column 'row_id' is null at row {row}; "
                        "drop that row or give it a row id")
    if pa.types.is_integer(col.type):
        try:
            return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid as exc:
            raise PoolError(f"labelled set {loc.display}: column 'row_id' has a value outside "
                            "the int64 range; use pool row ids") from exc
    if pa.types.is_floating(col.type):
        x = col.to_numpy(zero_copy_only=False)
        bad = ~np.isfinite(x) | (x != np.round(x)) | (np.abs(x) >= 2.0 ** 63)
        if bad.any():
            row = int(np.argmax(bad))
            raise PoolError(f"labelled set {loc.display}: column 'row_id' has non-integer "
                            f"value {float(x[row])!r} at row {row}; write integer row ids")
        return x.astype(np.int64)
    raise PoolError(f"labelled set {loc.display}: column 'row_id' has type {col.type}, "
                    "expected integers; write it as int64")


def read_labeled(path: str) -> np.ndarray:
    """The labelled pool rows listed in ``path`` as sorted, unique int64 ``row_id``s ``[L]``.

    ``path`` (local or URI) is a ``.parquet`` file or a ``.csv`` file with a header, or a
    local ledger directory (``alscale labels import``); only the ``row_id`` column is used,
    duplicates are dropped. Errors name the line (CSV: the
    header is line 1) or row.
    """
    loc = resolve(path)
    lower = loc.path.lower()
    if loc.is_local and os.path.isdir(loc.path):  # an alscale ledger: round-NNNNN.parquet files
        files = sorted(f for f in os.listdir(loc.path) if f.startswith("round-") and f.endswith(".parquet"))
        if not files:
            raise PoolError(f"labelled set {loc.display}: a directory without ledger files (round-*.parquet); give "
                            "a ledger made by `alscale labels import`, or a .parquet / .csv file")
        ids = np.concatenate([_from_parquet(resolve(os.path.join(loc.path, f))) for f in files])
    elif lower.endswith(".csv"):
        ids = _from_csv(loc)
    elif lower.endswith(".parquet"):
        ids = _from_parquet(loc)
    else:
        raise PoolError(f"labelled set {loc.display}: unknown format; use a .parquet or .csv "
                        "file with a 'row_id' column")
    return np.unique(ids.astype(np.int64, copy=False))


def read_labels(path: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(row_ids, labels)`` of a labelled set that carries labels — a ledger directory, or a
    Parquet/CSV file with a ``label`` column — else None."""
    loc = resolve(path)
    if loc.is_local and os.path.isdir(loc.path):
        files = sorted(f for f in os.listdir(loc.path) if f.startswith("round-") and f.endswith(".parquet"))
        tables = [pq.read_table(os.path.join(loc.path, f), columns=[ROW_ID, "label"]) for f in files]
    elif loc.path.lower().endswith(".parquet"):
        with _open(loc) as f:
            pf = pq.ParquetFile(f)
            if "label" not in pf.schema_arrow.names:
                return None
            tables = [pf.read(columns=[ROW_ID, "label"])]
    elif loc.path.lower().endswith(".csv"):
        with _open(loc) as f:
            t = pacsv.read_csv(f)
        if "label" not in t.column_names:
            return None
        tables = [t.select([ROW_ID, "label"])]
    else:
        return None
    if not tables:
        return None
    ids = np.concatenate([t.column(ROW_ID).to_numpy().astype(np.int64) for t in tables])
    labels = np.concatenate([t.column("label").to_numpy().astype(np.int64) for t in tables])
    return ids, labels
