"""Round trips of every column type through both formats, local paths and file:// URIs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pool_fixtures import known_arrays, known_table

from alscale.errors import PoolError
from alscale.pool import describe_pool, open_pool, pool_table, read_shard
from alscale.types import ShardSpec

ALL = ("features", "log_probs", "embedding", "label")


@pytest.mark.parametrize("uri", [False, True], ids=["path", "file-uri"])
def test_every_column_round_trips_exactly(write_pool, fmt, uri):
    arrays = known_arrays(50)
    path = write_pool(pool_table(**arrays), fmt)
    pool = f"file://{path}" if uri else path
    info = open_pool(pool)
    assert (info.format, info.n_rows, info.feature_dim, info.n_samples, info.n_classes,
            info.embedding_dim, info.has_label) == (fmt, 50, 3, 2, 4, 5, True)
    assert info.columns == ("row_id", "features", "log_probs", "embedding", "label")
    assert info.file_rows == (50,) and len(info.files) == 1
    got = read_shard(ShardSpec(pool, 0, 0, 50), ALL)
    np.testing.assert_array_equal(got.row_ids_N, arrays["row_ids_N"])
    np.testing.assert_array_equal(got.features_N_D, arrays["features_N_D"])
    np.testing.assert_array_equal(got.log_probs_N_K_C, arrays["log_probs_N_K_C"])
    np.testing.assert_array_equal(got.embeddings_N_D, arrays["embeddings_N_D"])
    np.testing.assert_array_equal(got.labels_N, arrays["labels_N"])
    assert got.features_N_D.dtype == np.float32 and got.labels_N.dtype == np.int64
    assert got.row_ids_N.dtype == np.int64


def test_flat_log_probs_read_with_k_axis(write_pool, fmt):
    lp_N_C = -np.arange(30, dtype=np.float32).reshape(10, 3)
    path = write_pool(pool_table(np.arange(10), log_probs_N_C=lp_N_C), fmt)
    info = open_pool(path)
    assert (info.n_samples, info.n_classes, info.feature_dim) == (1, 3, None)
    got = read_shard(ShardSpec(path, 0, 2, 7), ["log_probs"])
    assert got.log_probs_N_K_C.shape == (5, 1, 3)
    np.testing.assert_array_equal(got.log_probs_N_K_C[:, 0], lp_N_C[2:7])
    assert got.features_N_D is None and got.labels_N is None


def test_only_requested_columns_are_returned(write_pool):
    path = write_pool(known_table(8))
    got = read_shard(ShardSpec(path, 0, 0, 8))
    assert got.n_rows == 8
    assert (got.features_N_D, got.log_probs_N_K_C, got.embeddings_N_D, got.labels_N) == \
        (None, None, None, None)


@pytest.mark.parametrize("value_type", [pa.float16(), pa.float64()])
def test_float16_and_float64_values_are_read_as_float32(write_pool, fmt, value_type):
    x_N_D = np.array([[0.5, -1.25], [2.0, 3.5], [4.0, 0.0]])
    values = pa.array(x_N_D.reshape(-1).astype(value_type.to_pandas_dtype()), value_type)
    table = pa.table({"row_id": pa.array([0, 1, 2], pa.int64()),
                      "features": pa.FixedSizeListArray.from_arrays(values, 2),
                      "label": pa.array([1, 2, 3], pa.int16())})
    path = write_pool(table, fmt)
    got = read_shard(ShardSpec(path, 0, 0, 3), ["features", "label"])
    assert got.features_N_D.dtype == np.float32 and got.labels_N.dtype == np.int64
    np.testing.assert_array_equal(got.features_N_D, x_N_D.astype(np.float32))
    np.testing.assert_array_equal(got.labels_N, [1, 2, 3])


def test_pool_table_is_zero_copy_and_typed():
    x_N_D = np.arange(12, dtype=np.float32).reshape(4, 3)
    ids_N = np.arange(4, dtype=np.int64)
    table = pool_table(ids_N, features_N_D=x_N_D, log_probs_N_K_C=np.zeros((4, 2, 5)))
    assert str(table.schema.field("features").type) == "fixed_size_list<item: float>[3]"
    assert table.schema.field("log_probs").type.list_size == 2
    assert table.schema.field("log_probs").type.value_type.list_size == 5
    buf = table.column("features").chunk(0).values.buffers()[1]
    assert buf.address == x_N_D.__array_interface__["data"][0]
    assert table.column("row_id").chunk(0).buffers()[1].address == \
        ids_N.__array_interface__["data"][0]


def test_pool_table_rejects_bad_input():
    with pytest.raises(PoolError, match="features_N_D has 3 rows but row_ids_N has 4"):
        pool_table(np.arange(4), features_N_D=np.zeros((3, 2)))
    with pytest.raises(PoolError, match="not both"):
        pool_table(np.arange(2), log_probs_N_C=np.zeros((2, 3)),
                   log_probs_N_K_C=np.zeros((2, 1, 3)))
    with pytest.raises(PoolError, match="log_probs_N_K_C must have 3 dimensions"):
        pool_table(np.arange(2), log_probs_N_K_C=np.zeros((2, 3)))
    with pytest.raises(PoolError, match="row_ids_N must hold integers"):
        pool_table(np.array([0.5, 1.5]))


def test_describe_pool_mentions_the_essentials(write_pool):
    info = open_pool(write_pool(known_table(20)))
    text = describe_pool(info)
    assert "20" in text and "Arrow IPC" in text
    assert "[3] float32" in text and "K=2" in text and "C=4" in text and "[5] float32" in text
    assert len(text.splitlines()) >= 8
