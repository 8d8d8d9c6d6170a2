"""write_table / PoolWriter: atomic local writes, uncompressed IPC, Parquet layout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from pool_fixtures import known_table

from alscale.errors import AlscaleError, PoolError
from alscale.pool import PoolWriter, open_pool, write_table


def test_no_temporary_file_is_left(tmp_path, fmt):
    path = tmp_path / ("p.arrow" if fmt == "ipc" else "p.parquet")
    write_table(known_table(10), str(path))
    assert os.listdir(tmp_path) == [path.name]
    assert open_pool(str(path)).n_rows == 10


def test_exception_mid_write_leaves_no_final_file(tmp_path, fmt):
    path = tmp_path / ("p.arrow" if fmt == "ipc" else "p.parquet")
    with pytest.raises(RuntimeError, match="boom"), PoolWriter(str(path)) as writer:
        writer.write(known_table(10))
        names = sorted(os.listdir(tmp_path))  # the hidden temporary file and the writer's lock
        assert len(names) == 2 and names[0] == f".{path.name}.lock" and names[1].startswith(f".{path.name}.tmp-")
        assert not path.exists()
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "p.arrow"
    write_table(known_table(5), str(path))
    other = known_table(5).drop_columns(["label"])
    with pytest.raises(PoolError, match="does not match the file's schema"), PoolWriter(str(path)) as writer:
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


# -- one writer per pool file (issue 18) --------------------------------------------------------------

_HOLDER = """
import sys
from alscale.pool import PoolWriter
sys.path.insert(0, sys.argv[2])
from pool_fixtures import known_table
w = PoolWriter(sys.argv[1])
w.write(known_table(7))
print("writing", flush=True)
if sys.stdin.readline().strip() == "commit":
    w.close()
    print("done", flush=True)
"""


def _holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), str(Path(__file__).parent)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_a_second_writer_of_the_same_pool_file_is_refused_while_the_first_writes(tmp_path):
    path = tmp_path / "p.arrow"
    write_table(known_table(3), str(path))  # an earlier pool at the path
    first = _holder(path)
    try:
        with pytest.raises(AlscaleError) as info:
            PoolWriter(str(path))
        assert str(info.value).startswith(f"pool {path} is in use by another alscale job (pid {first.pid} on ")
        assert str(info.value).endswith("wait for it to finish or write another path")
        cli = subprocess.run([str(Path(sys.executable).parent / "alscale"), "pool", "synth", str(path), "--rows", "50",
                              "--dim", "2", "--classes", "2"], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 2 and cli.stderr.count("\n") == 1, cli.stderr
        assert f"pool {path} is in use by another alscale job (pid {first.pid}" in cli.stderr
        assert open_pool(str(path)).n_rows == 3  # the refused writers changed nothing
        write_table(known_table(4), str(tmp_path / "q.arrow"))  # another file of the directory: not locked
        first.stdin.write("commit\n")
        first.stdin.flush()
        assert first.stdout.readline().strip() == "done"
    finally:
        first.kill()
        first.wait()
    assert open_pool(str(path)).n_rows == 7
    write_table(known_table(5), str(path))  # the first has finished: the path is free again
    assert open_pool(str(path)).n_rows == 5
    assert sorted(os.listdir(tmp_path)) == ["p.arrow", "q.arrow"]  # no lock or temporary file left


def test_the_pool_lock_is_held_in_process_too_and_freed_however_the_holder_ends(tmp_path):
    path = tmp_path / "p.parquet"
    writer = PoolWriter(str(path))
    with pytest.raises(AlscaleError, match="is in use by another alscale job"):
        PoolWriter(str(path))
    writer.abort()
    with PoolWriter(str(path)) as again:  # released by abort
        again.write(known_table(2))
    killed = _holder(path)
    killed.send_signal(signal.SIGKILL)  # a writer killed mid-write: the kernel frees its lock
    killed.wait()
    write_table(known_table(6), str(path))
    assert open_pool(str(path)).n_rows == 6
    left = sorted(n for n in os.listdir(tmp_path) if n != "p.parquet")
    assert all(n.startswith(".p.parquet.") for n in left), left  # only the killed writer's hidden files
