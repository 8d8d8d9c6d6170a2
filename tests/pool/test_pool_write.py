"""write_table / PoolWriter: atomic local writes, uncompressed IPC, Parquet layout."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from pool_fixtures import known_table

from alscale.errors import PoolError
from alscale.pool import PoolWriter, open_pool, write_table


def test_no_temporary_file_is_left(tmp_path, fmt):
    path = tmp_path / ("p.arrow" if fmt == "ipc" else "p.parquet")
    write_table(known_table(10), str(path))
    assert os.listdir(tmp_path) == [path.name]
    assert open_pool(str(path)).n_rows == 10


def test_exception_mid_write_leaves_no_final_file(tmp_path, fmt):
    path = tmp_path / ("p.arrow" if fmt == "ipc" else "p.parquet")
    with pytest.raises(RuntimeError, match="boom"):
        with PoolWriter(str(path)) as writer:
            writer.write(known_table(10))
            assert len(os.listdir(tmp_path)) == 1  # the hidden temporary file
            assert not path.exists()
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "p.arrow"
    write_table(known_table(5), str(path))
    other = known_table(5).drop_columns(["label"])
    with pytest.raises(PoolError, match="does not match the file's schema"):
        with PoolWriter(str(path)) as writer:
            writer.write(known_table(3))
            writer.write(other)
    assert os.listdir(tmp_path) == ["p.arrow"]
    assert open_pool(str(path)).n_rows == 5


def test_streamed_writes_concatenate(tmp_path):
    path = str(tmp_path / "p.parquet")
    with PoolWriter(path, rows_per_batch=4) as writer:
        writer.write(known_table(6))
        writer.write(known_table(5, start_id=100).to_batches()[0])
    assert writer.rows_written == 11
    assert pq.ParquetFile(path).metadata.num_rows == 11


def test_ipc_is_uncompressed_and_memory_maps_without_allocation(tmp_path):
    path = str(tmp_path / "p.feather")
    write_table(known_table(100), path, rows_per_batch=30)
    with pa.memory_map(path) as source:
        reader = ipc.open_file(source)
        assert reader.num_record_batches == 4
        before = pa.total_allocated_bytes()
        table = reader.read_all()
        assert pa.total_allocated_bytes() == before  # compressed data would need buffers
        assert table.equals(known_table(100))


def test_parquet_layout(tmp_path):
    path = str(tmp_path / "p.parquet")
    write_table(known_table(100), path, rows_per_batch=32)
    md = pq.ParquetFile(path).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [32, 32, 32, 4]
    columns = {md.row_group(0).column(j).path_in_schema: md.row_group(0).column(j)
               for j in range(md.num_columns)}
    assert all(c.compression == "ZSTD" for c in columns.values())
    assert columns["label"].has_dictionary_page
    assert not columns["features.list.element"].has_dictionary_page


def test_format_checks(tmp_path):
    with pytest.raises(PoolError, match="does not match the file suffix"):
        write_table(known_table(2), str(tmp_path / "p.arrow"), format="parquet")
    with pytest.raises(PoolError, match="cannot tell the format from the name"):
        write_table(known_table(2), str(tmp_path / "p.bin"))
    write_table(known_table(2), str(tmp_path / "p.bin"), format="ipc")
    assert ipc.open_file(str(tmp_path / "p.bin")).num_record_batches == 1


def test_creates_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "p.arrow"
    write_table(known_table(2), f"file://{path}")
    assert path.is_file() and os.listdir(path.parent) == ["p.arrow"]
