"""read_labeled: row ids from CSV or Parquet, deduplicated and sorted; precise errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alscale.errors import PoolError
from alscale.pool import read_labeled


def test_csv_ids_are_sorted_unique_int64(tmp_path):
    path = tmp_path / "labeled.csv"
    path.write_text("row_id,round,label\n7,0,1\n3,0,2\n7,1,1\n-2,1,0\n 11 ,2,3\n")
    ids = read_labeled(str(path))
    assert ids.dtype == np.int64 and ids.tolist() == [-2, 3, 7, 11]


def test_parquet_ids_and_file_uri(tmp_path):
    path = tmp_path / "labeled.parquet"
    pq.write_table(pa.table({"round": [0, 0, 1], "row_id": pa.array([9, 4, 9], pa.int32())}),
                   path)
    assert read_labeled(str(path)).tolist() == [4, 9]
    assert read_labeled(f"file://{path}").tolist() == [4, 9]


def test_empty_csv_gives_empty_array(tmp_path):
    path = tmp_path / "labeled.csv"
    path.write_text("row_id\n")
    ids = read_labeled(str(path))
    assert ids.shape == (0,) and ids.dtype == np.int64


def test_integral_float_parquet_ids_are_accepted(tmp_path):
    path = tmp_path / "labeled.parquet"
    pq.write_table(pa.table({"row_id": [3.0, 1.0]}), path)
    assert read_labeled(str(path)).tolist() == [1, 3]


def test_missing_file(tmp_path):
    path = str(tmp_path / "none.csv")
    with pytest.raises(PoolError, match="no such file") as exc:
        read_labeled(path)
    assert path in str(exc.value)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_missing_row_id_column_lists_columns(tmp_path, suffix):
    path = tmp_path / f"labeled.{suffix}"
    if suffix == "csv":
        path.write_text("id,label\n1,2\n")
    else:
        pq.write_table(pa.table({"id": [1], "label": [2]}), path)
    with pytest.raises(PoolError) as exc:
        read_labeled(str(path))
    assert str(exc.value) == (f"labelled set {path}: column 'row_id' is missing (columns: id, "
                              "label); add a 'row_id' column of pool row ids")


@pytest.mark.parametrize("body, expected", [
    ("row_id\n1\n2.5\n", "has value '2.5' at line 3 (row 1)"),
    ("row_id,x\n1,a\nabc,b\n", "has value 'abc' at line 3 (row 1)"),
    ("row_id,x\n1,a\n2,b\n,c\n", "has an empty value at line 4 (row 2)"),
])
def test_csv_bad_values_name_the_line(tmp_path, body, expected):
    path = tmp_path / "labeled.csv"
    path.write_text(body)
    with pytest.raises(PoolError) as exc:
        read_labeled(str(path))
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and expected in message


@pytest.mark.parametrize("column, expected", [
    (pa.array([1, None, 3], pa.int64()), "column 'row_id' is null at row 1"),
    (pa.array([1.0, 2.5]), "non-integer value 2.5 at row 1"),
    (pa.array(["1", "2"]), "column 'row_id' has type string, expected integers"),
])
def test_parquet_bad_values_name_the_row(tmp_path, column, expected):
    path = tmp_path / "labeled.parquet"
    pq.write_table(pa.table({"row_id": column}), path)
    with pytest.raises(PoolError, match=expected):
        read_labeled(str(path))


def test_unknown_format(tmp_path):
    path = tmp_path / "labeled.json"
    path.write_text("[]")
    with pytest.raises(PoolError, match=r"labeled\.json: unknown format; use a \.parquet or \.csv"):
        read_labeled(str(path))
