"""open_pool: pool discovery, schema checks and row-id checks, with one-line errors."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from pool_fixtures import SUFFIX, known_table

from alscale.errors import PoolError
from alscale.pool import open_pool, pool_table, write_table


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_file_names_the_path(tmp_path):
    path = str(tmp_path / "nope.arrow")
    with pytest.raises(PoolError) as exc:
        open_pool(path)
    assert path in _one_line(exc) and "no such file" in str(exc.value)


def test_missing_file_uri_names_the_uri(tmp_path):
    uri = f"file://{tmp_path}/nope.parquet"
    with pytest.raises(PoolError, match="no such file") as exc:
        open_pool(uri)
    assert uri in str(exc.value)


def test_missing_row_id(write_pool, fmt):
    path = write_pool(known_table(5).drop_columns(["row_id"]), fmt)
    with pytest.raises(PoolError) as exc:
        open_pool(path)
    assert _one_line(exc) == (f"pool {path}: column 'row_id' is missing; add an int64 column "
                              "'row_id' with one unique id per row")


def test_row_id_must_be_int64(write_pool, fmt):
    table = known_table(5)
    table = table.set_column(0, "row_id", table.column("row_id").cast(pa.int32()))
    path = write_pool(table, fmt)
    with pytest.raises(PoolError, match=r"column 'row_id' has type int32, expected int64") as exc:
        open_pool(path)
    assert path in _one_line(exc)


def test_duplicate_row_id_names_value_and_rows(write_pool, fmt):
    ids = np.array([5, 9, 3, 9, 1, 5], dtype=np.int64)
    path = write_pool(pool_table(ids), fmt)
    with pytest.raises(PoolError) as exc:
        open_pool(path)
    assert _one_line(exc) == (f"pool {path}: column 'row_id' has duplicate value 5 at row 0 "
                              "and row 5; make row_id unique (one id per row)")
    # the duplicate check can be skipped
    assert open_pool(path, check_row_ids=False).n_rows == 6


def test_duplicate_row_id_across_files_names_both_files(tmp_path, fmt):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_table(pool_table(np.array([0, 1, 2])), str(folder / f"a{SUFFIX[fmt]}"))
    write_table(pool_table(np.array([3, 1])), str(folder / f"b{SUFFIX[fmt]}"))
    with pytest.raises(PoolError) as exc:
        open_pool(str(folder))
    message = _one_line(exc)
    assert "duplicate value 1 at row 1" in message and "row 4" in message
    assert f"a{SUFFIX[fmt]}" in message and f"b{SUFFIX[fmt]}, row 1 of that file" in message


def test_null_row_id_names_the_row(write_pool, fmt):
    table = pa.table({"row_id": pa.array([0, 1, None, 3], pa.int64())})
    path = write_pool(table, fmt)
    with pytest.raises(PoolError, match=r"column 'row_id' is null at row 2"):
        open_pool(path)


def test_unsorted_unique_row_ids_pass(write_pool):
    ids = np.random.default_rng(0).permutation(10_000).astype(np.int64) * 3 - 7
    assert open_pool(write_pool(pool_table(ids))).n_rows == 10_000


@pytest.mark.parametrize("column, array, expected", [
    ("features", pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())),
     "column 'features' has type list<item: float>, expected fixed_size_list<float32>[D]"),
    ("features", pa.array([[1, 2], [3, 4]], pa.list_(pa.int32(), 2)),
     "column 'features' has type fixed_size_list<item: int32>[2]"),
    ("embedding", pa.array([1.0, 2.0], pa.float32()),
     "column 'embedding' has type float, expected fixed_size_list<float32>[E]"),
    ("log_probs", pa.array([[[1.0], [2.0]], [[3.0], [4.0]]],
                           pa.list_(pa.list_(pa.float32()), 2)),
     "column 'log_probs' has type fixed_size_list<item: list<item: float>>[2]"),
    ("label", pa.array([0.0, 1.0], pa.float64()),
     "column 'label' has type double, expected an integer class index"),
])
def test_wrong_column_types_are_named(write_pool, fmt, column, array, expected):
    table = pa.table({"row_id": pa.array([0, 1], pa.int64()), column: array})
    path = write_pool(table, fmt)
    with pytest.raises(PoolError) as exc:
        open_pool(path)
    message = _one_line(exc).replace("element:", "item:")  # Parquet names the list item 'element'
    assert message.startswith(f"pool {path}: ") and expected in message


def _dataset(tmp_path, fmt, *tables):
    folder = tmp_path / "ds"
    folder.mkdir()
    for i, table in enumerate(tables):
        write_table(table, str(folder / f"part-{i:03d}{SUFFIX[fmt]}"))
    return str(folder)


def test_dataset_directory_reads_files_in_name_order(tmp_path, fmt):
    folder = _dataset(tmp_path, fmt, known_table(4, start_id=0), known_table(3, start_id=10))
    (tmp_path / "ds" / "_SUCCESS").write_text("")
    (tmp_path / "ds" / ".part-999.tmp").write_text("half written")
    info = open_pool(folder)
    assert info.n_rows == 7 and info.file_rows == (4, 3) and info.format == fmt
    assert [os.path.basename(f) for f in info.files] == [f"part-000{SUFFIX[fmt]}",
                                                         f"part-001{SUFFIX[fmt]}"]


def test_mismatched_dims_across_files(tmp_path, fmt):
    folder = _dataset(tmp_path, fmt, known_table(4, dim=3), known_table(4, dim=6, start_id=50))
    with pytest.raises(PoolError) as exc:
        open_pool(folder)
    message = _one_line(exc)
    assert f"part-001{SUFFIX[fmt]}: column 'features' has dimension D 6 but" in message
    assert f"part-000{SUFFIX[fmt]} has 3" in message


def test_mismatched_classes_across_files(tmp_path, fmt):
    folder = _dataset(tmp_path, fmt, known_table(4, classes=4),
                      known_table(4, classes=5, start_id=50))
    with pytest.raises(PoolError, match=r"column 'log_probs' has number of classes C 5 but"):
        open_pool(folder)


def test_column_missing_in_one_file(tmp_path, fmt):
    folder = _dataset(tmp_path, fmt, known_table(4),
                      known_table(4, start_id=50).drop_columns(["embedding"]))
    with pytest.raises(PoolError, match=r"part-001\.\w+: column 'embedding' is missing but"):
        open_pool(folder)


def test_directory_without_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PoolError, match=r"has no \*\.parquet or \*\.arrow files") as exc:
        open_pool(str(tmp_path))
    assert str(tmp_path) in str(exc.value)


def test_directory_mixing_formats(tmp_path):
    write_table(known_table(2), str(tmp_path / "a.arrow"))
    write_table(known_table(2, start_id=9), str(tmp_path / "b.parquet"))
    with pytest.raises(PoolError, match="mixes Arrow IPC"):
        open_pool(str(tmp_path))


def test_unknown_suffix_and_corrupt_file(tmp_path):
    odd = tmp_path / "pool.csv"
    odd.write_text("row_id\n1\n")
    with pytest.raises(PoolError, match=r"pool .*pool\.csv: unknown format"):
        open_pool(str(odd))
    bad = tmp_path / "pool.arrow"
    bad.write_bytes(b"definitely not arrow")
    with pytest.raises(PoolError, match=r"pool .*pool\.arrow: cannot read it as an Arrow IPC"):
        open_pool(str(bad))
    bad_pq = tmp_path / "pool.parquet"
    bad_pq.write_bytes(b"PAR1 nope")
    with pytest.raises(PoolError, match=r"pool .*pool\.parquet: cannot read it as a Parquet"):
        open_pool(str(bad_pq))


def test_info_path_is_absolute_for_a_relative_pool(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_table(known_table(3), "rel.arrow")
    info = open_pool("rel.arrow")
    assert info.path == str(tmp_path / "rel.arrow") and info.files == (info.path,)
    monkeypatch.chdir("/")
    assert open_pool(info.path).n_rows == 3
    with pytest.raises(PoolError, match=r"^pool rel\.arrow: no such file"):
        open_pool("rel.arrow")  # messages show the path as given
