"""read_shard: ranges across batches, row groups and files; zero-copy IPC; value checks."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pool_fixtures import SUFFIX, known_arrays, known_table

import alscale.pool.location as location
from alscale.errors import PoolError
from alscale.pool import open_pool, plan_shards, pool_table, read_shard, write_table
from alscale.pool.datafile import DataFile
from alscale.types import ShardSpec

ALL = ("features", "log_probs", "embedding", "label")
FIELDS = ("row_ids_N", "features_N_D", "log_probs_N_K_C", "embeddings_N_D", "labels_N")
N_ROWS = 60  # over three files of 25 + 20 + 15 rows, in batches / row groups of 7


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> dict[str, str]:
    """One pool per layout: single file and three-file dataset, in both formats."""
    root = tmp_path_factory.mktemp("pools")
    table = known_table(N_ROWS)
    out = {}
    for fmt, suffix in SUFFIX.items():
        single = str(root / f"single{suffix}")
        write_table(table, single, rows_per_batch=7)
        folder = root / f"multi-{fmt}"
        folder.mkdir()
        for name, (lo, hi) in zip("abc", [(0, 25), (25, 45), (45, 60)]):
            write_table(table.slice(lo, hi - lo), str(folder / f"{name}{suffix}"),
                        rows_per_batch=7)
        out[f"{fmt}-single"], out[f"{fmt}-multi"] = single, str(folder)
    return out


def _assert_rows(got, start: int, stop: int) -> None:
    expected = known_arrays(N_ROWS)
    for field, key in zip(FIELDS, ["row_ids_N", "features_N_D", "log_probs_N_K_C",
                                   "embeddings_N_D", "labels_N"]):
        np.testing.assert_array_equal(getattr(got, field), expected[key][start:stop],
                                      err_msg=field)


@pytest.mark.parametrize("layout", ["ipc-single", "ipc-multi", "parquet-single", "parquet-multi"])
@settings(max_examples=25, deadline=None)
@given(bounds=st.tuples(st.integers(0, N_ROWS), st.integers(0, N_ROWS)))
def test_any_range_equals_the_same_rows_of_a_full_read(pools, layout, bounds):
    start, stop = sorted(bounds)
    pool = pools[layout]
    full = read_shard(ShardSpec(pool, 0, 0, N_ROWS), ALL)
    part = read_shard(ShardSpec(pool, 1, start, stop), ALL)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(part, field), getattr(full, field)[start:stop])
    _assert_rows(part, start, stop)


@pytest.mark.parametrize("layout", ["ipc-multi", "parquet-multi"])
def test_shards_of_a_plan_concatenate_to_the_pool(pools, layout):
    info = open_pool(pools[layout])
    assert info.file_rows == (25, 20, 15)
    shards = [read_shard(s, ALL) for s in plan_shards(pools[layout], info.n_rows, 4)]
    for field in FIELDS:
        joined = np.concatenate([getattr(s, field) for s in shards])
        np.testing.assert_array_equal(joined, getattr(read_shard(
            ShardSpec(pools[layout], 0, 0, N_ROWS), ALL), field))


def test_parquet_reads_only_the_overlapping_row_groups(pools, monkeypatch):
    requested = []
    original = DataFile.read_pieces

    def spy(self, pieces, columns):
        requested.append((os.path.basename(self.where), list(pieces)))
        return original(self, pieces, columns)

    monkeypatch.setattr(DataFile, "read_pieces", spy)
    _assert_rows(read_shard(ShardSpec(pools["parquet-single"], 0, 15, 20), ALL), 15, 20)
    _assert_rows(read_shard(ShardSpec(pools["parquet-multi"], 0, 20, 30), ALL), 20, 30)
    # row groups of 7 rows: [15, 20) is inside group 2; [20, 30) spans a.parquet groups 2-3
    # (rows 14-24) and b.parquet group 0 (pool rows 25-31)
    assert requested == [("single.parquet", [2]), ("a.parquet", [2, 3]), ("b.parquet", [0])]


def test_file_uri_reads_like_a_path(pools):
    for layout in ("ipc-multi", "parquet-single"):
        _assert_rows(read_shard(ShardSpec(f"file://{pools[layout]}", 0, 3, 40), ALL), 3, 40)


def test_empty_range_has_the_right_shapes(pools):
    got = read_shard(ShardSpec(pools["ipc-single"], 0, 9, 9), ALL)
    assert got.row_ids_N.shape == (0,) and got.features_N_D.shape == (0, 3)
    assert got.log_probs_N_K_C.shape == (0, 2, 4) and got.embeddings_N_D.shape == (0, 5)


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(os.path.realpath(path)):
                lo, hi = line.split()[0].split("-")
                ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_ipc_read_inside_one_batch_is_zero_copy_view_of_the_mapped_file(tmp_path):
    path = str(tmp_path / "p.arrow")
    write_table(known_table(1000), path, rows_per_batch=600)
    before = pa.total_allocated_bytes()
    got = read_shard(ShardSpec(path, 0, 100, 500), ALL)  # inside batch 0
    assert pa.total_allocated_bytes() == before  # arrow allocated nothing: no copy
    ranges = _mapped_ranges(path)
    assert ranges, "the pool file is not memory-mapped"
    for field in ("row_ids_N", "features_N_D", "log_probs_N_K_C", "embeddings_N_D", "labels_N"):
        arr = getattr(got, field)
        address = arr.__array_interface__["data"][0]
        assert not arr.flags.writeable, field
        assert any(lo <= address and address + arr.nbytes <= hi for lo, hi in ranges), field
    expected = known_arrays(1000)
    np.testing.assert_array_equal(got.features_N_D, expected["features_N_D"][100:500])
    # a range spanning two batches is a (correct) fresh copy
    spanning = read_shard(ShardSpec(path, 1, 500, 700), ["features"])
    assert spanning.features_N_D.flags.owndata
    np.testing.assert_array_equal(spanning.features_N_D, expected["features_N_D"][500:700])


@pytest.mark.parametrize("column, field, bad", [
    ("features", "features_N_D", np.nan),
    ("embedding", "embeddings_N_D", np.inf),
    ("log_probs", "log_probs_N_K_C", np.nan),
    ("log_probs", "log_probs_N_K_C", np.inf),
])
def test_non_finite_value_names_column_and_row_id(write_pool, fmt, column, field, bad):
    arrays = known_arrays(30)
    arrays[field][17].reshape(-1)[0] = bad
    path = write_pool(pool_table(**arrays), fmt, rows_per_batch=8)
    row_id = int(arrays["row_ids_N"][17])
    with pytest.raises(PoolError) as exc:
        read_shard(ShardSpec(path, 0, 10, 30), [column])
    shown = {np.nan: "nan", np.inf: "inf", -np.inf: "-inf"}[bad]
    assert str(exc.value) == (
        f"pool {path}: column '{column}' has a non-finite value ({shown}) at row_id {row_id}; "
        "clean or drop that row")
    # rows before the bad one read fine; the check can be turned off
    assert read_shard(ShardSpec(path, 0, 0, 17), [column]).n_rows == 17
    unchecked = read_shard(ShardSpec(path, 0, 10, 30), [column], check_finite=False)
    assert not np.isfinite(getattr(unchecked, field)[7]).all()


def test_minus_inf_log_probs_are_valid(write_pool, fmt):
    """log 0 = -inf is a legal log-probability; NaN and +inf are not (above)."""
    arrays = known_arrays(30)
    arrays["log_probs_N_K_C"][17].reshape(-1)[0] = -np.inf
    path = write_pool(pool_table(**arrays), fmt, rows_per_batch=8)
    got = read_shard(ShardSpec(path, 0, 10, 30), ["log_probs"])
    assert got.log_probs_N_K_C[7].reshape(-1)[0] == -np.inf


def test_non_finite_in_a_dataset_names_the_file(tmp_path):
    arrays = known_arrays(10)
    arrays["features_N_D"][8, 1] = np.nan
    table = pool_table(**arrays)
    write_table(table.slice(0, 5), str(tmp_path / "a.arrow"))
    write_table(table.slice(5, 5), str(tmp_path / "b.arrow"))
    with pytest.raises(PoolError, match=r"b\.arrow: column 'features' has a non-finite value "
                                        rf"\(nan\) at row_id {arrays['row_ids_N'][8]};"):
        read_shard(ShardSpec(str(tmp_path), 0, 0, 10), ["features"])


def test_null_vector_value_names_row_id(write_pool, fmt):
    values = pa.array([1.0, 2.0, 3.0, None, 5.0, 6.0], pa.float32())
    table = pa.table({"row_id": pa.array([10, 11, 12], pa.int64()),
                      "features": pa.FixedSizeListArray.from_arrays(values, 2)})
    path = write_pool(table, fmt)
    with pytest.raises(PoolError, match=r"column 'features' is null at row_id 11; fill or drop"):
        read_shard(ShardSpec(path, 0, 0, 3), ["features"])


def test_missing_requested_column_lists_present_columns(write_pool, fmt):
    path = write_pool(known_table(5).drop_columns(["embedding", "label"]), fmt)
    with pytest.raises(PoolError) as exc:
        read_shard(ShardSpec(path, 0, 0, 5), ["features", "embedding"])
    assert str(exc.value) == (f"pool {path}: column 'embedding' was requested but is missing "
                              "(columns present: row_id, features, log_probs); add it to the "
                              "pool or do not request it")


def test_unknown_column_and_out_of_range_shard(write_pool):
    path = write_pool(known_table(5))
    with pytest.raises(PoolError, match=r"cannot read column 'image'"):
        read_shard(ShardSpec(path, 0, 0, 5), ["image"])
    with pytest.raises(PoolError, match=r"shard 3 rows \[2, 9\) are outside the pool's 5 rows"):
        read_shard(ShardSpec(path, 3, 2, 9), ["features"])


def test_remote_filesystem_path_without_mmap(tmp_path, monkeypatch, fmt):
    """A URI whose filesystem is not local: no memory map, no rename; same results."""
    remote = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    monkeypatch.setattr(location, "filesystem_from_uri",
                        lambda uri: (remote, uri.split("://", 1)[1]))
    (tmp_path / "bucket").mkdir()  # the bucket exists; object stores need no directories
    uri = f"remote://bucket/pool{SUFFIX[fmt]}"
    write_table(known_table(N_ROWS), uri, rows_per_batch=7)
    assert (tmp_path / "bucket" / f"pool{SUFFIX[fmt]}").is_file()
    assert open_pool(uri).n_rows == N_ROWS
    got = read_shard(ShardSpec(uri, 0, 5, 33), ALL)
    _assert_rows(got, 5, 33)
