"""End to end: a real pool on disk -> shards -> scores -> exact global top-k -> selection on disk.

The same job must give the same ``selection.parquet`` for 1, 2 and 7 shards and for the
local and Ray executors.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from alscale.jobspec import validate_job
from alscale.pool import pool_table, write_table
from alscale.runtime.coordinator import run_job
from tests.conftest import log_softmax


@pytest.fixture(scope="module")
def lp_pool(tmp_path_factory):
    """4,000 rows with precomputed log-probs (K = 3 MC samples, C = 5) and shuffled row ids."""
    rng = np.random.default_rng(0)
    n = 4000
    lp = log_softmax(rng.normal(size=(n, 3, 5)) * 2)
    ids = rng.permutation(100_000)[:n].astype(np.int64)
    path = tmp_path_factory.mktemp("pools") / "lp.arrow"
    write_table(pool_table(ids, log_probs_N_K_C=lp), str(path), rows_per_batch=700)
    return path, ids, lp


@pytest.fixture(scope="module")
def feature_pool(tmp_path_factory):
    rng = np.random.default_rng(1)
    n = 3000
    x = rng.normal(size=(n, 16)).astype(np.float32)
    path = tmp_path_factory.mktemp("pools") / "features.parquet"
    write_table(pool_table(np.arange(n, dtype=np.int64), features_N_D=x), str(path), format="parquet",
                rows_per_batch=512)
    return path


def _job(pool, tmp_path, **over):
    raw = {
        "pool": {"path": str(pool)},
        "strategy": {"name": "entropy", "budget": 150},
        "runtime": {"executor": "local", "shards": 1},
        "seed": 4,
        "output": str(tmp_path / "out"),
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[section] = value
    return validate_job(raw)


def _table(out_dir):
    return pq.read_table(out_dir / "selection.parquet")


@pytest.mark.parametrize("strategy", ["entropy", "bald", "softrank", "random"])
def test_local_selection_identical_for_1_2_7_shards(lp_pool, tmp_path, strategy):
    path, ids, _ = lp_pool
    tables = []
    for shards in (1, 2, 7):
        job = _job(path, tmp_path, strategy__name=strategy, runtime__shards=shards)
        run_job(job, out_dir=tmp_path / f"out{shards}", progress=False)
        tables.append(_table(tmp_path / f"out{shards}"))
    assert tables[0].num_rows == 150
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


def test_selection_file_and_manifest(lp_pool, tmp_path):
    path, ids, lp = lp_pool
    labeled = tmp_path / "labeled.csv"
    labeled.write_text("row_id\n" + "\n".join(str(i) for i in ids[:500]) + "\n")
    job = _job(path, tmp_path, labeled={"path": str(labeled)}, strategy__budget=10)
    result = run_job(job, progress=False)
    t = _table(tmp_path / "out").to_pydict()
    assert t["rank"] == list(range(1, 11)) and set(t["strategy"]) == {"entropy"} and set(t["round"]) == {0}
    assert not set(t["row_id"]) & set(ids[:500].tolist())
    # brute force: highest entropy of the mean prediction among unlabelled rows
    p = np.exp(lp).mean(1)
    ent = -(p * np.log(p)).sum(1)
    ent[:500] = -np.inf
    assert t["row_id"] == ids[np.argsort(-ent, kind="stable")[:10]].tolist()
    np.testing.assert_allclose(t["score"], np.sort(ent)[::-1][:10], rtol=1e-5)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["pool"]["n_rows"] == 4000 and m["pool"]["n_labeled"] == 500 and m["seed"] == 4
    assert m["job"]["strategy"]["name"] == "entropy" and m["shard_plan"] == [[0, 4000]]
    assert {"read", "score", "select", "startup"} <= set(m["phase_seconds"]) and m["rows_per_s"] > 0
    assert m["versions"]["numpy"] and "git_revision" in m
    assert result.selection.indices_B.tolist() == t["row_id"]


def test_existing_selection_is_not_overwritten_without_force(lp_pool, tmp_path):
    path, _, _ = lp_pool
    job = _job(path, tmp_path)
    run_job(job, progress=False)
    from alscale.errors import AlscaleError

    with pytest.raises(AlscaleError, match="already holds a selection.*--force"):
        run_job(job, progress=False)
    run_job(job, force=True, progress=False)


def test_model_scoring_identical_for_1_2_7_shards(feature_pool, tmp_path):
    tables = []
    for shards in (1, 2, 7):
        job = _job(feature_pool, tmp_path, model={"factory": "mlp", "kwargs": {"num_classes": 4}, "mc_samples": 5,
                                                   "batch_size": 256},
                   strategy__name="bald", runtime__shards=shards, runtime__chunk_rows=300)
        run_job(job, out_dir=tmp_path / f"m{shards}", progress=False)
        tables.append(_table(tmp_path / f"m{shards}"))
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


@pytest.mark.ray
def test_ray_equals_local(lp_pool, feature_pool, tmp_path, ray_session):
    path, _, _ = lp_pool
    for name, job_kw in {
        "lp": dict(pool=path, strategy__name="softrank"),
        "model": dict(pool=feature_pool, model={"factory": "mlp", "kwargs": {"num_classes": 4}, "mc_samples": 3},
                      strategy__name="variation_ratios"),
    }.items():
        pool = job_kw.pop("pool")
        local = _job(pool, tmp_path, runtime__shards=3, **job_kw)
        run_job(local, out_dir=tmp_path / f"{name}-local", progress=False)
        remote = _job(pool, tmp_path, runtime__shards=3, runtime__executor="ray", **job_kw)
        result = run_job(remote, out_dir=tmp_path / f"{name}-ray", progress=False)
        assert result.manifest["runtime"]["executor"] == "ray"
        assert _table(tmp_path / f"{name}-local").equals(_table(tmp_path / f"{name}-ray"))


def test_pool_and_output_at_uris_take_the_same_path(lp_pool, tmp_path, monkeypatch):
    """s3:// / gs:// go through pyarrow.fs; here a stand-in remote store (no rename, no mmap)
    and file:// URIs give the same selection as local paths."""
    import shutil

    import pyarrow.fs as pafs

    from alscale.errors import AlscaleError
    from alscale.pool import location

    path, _, _ = lp_pool
    run_job(_job(path, tmp_path), progress=False)
    expected = _table(tmp_path / "out")
    # file:// URIs for pool and output.
    run_job(_job(f"file://{path}", tmp_path, output=f"file://{tmp_path}/out-file"), progress=False)
    assert _table(tmp_path / "out-file").equals(expected)
    # A remote object store: a bucket served by a filesystem that is not LocalFileSystem.
    (tmp_path / "bucket").mkdir()
    shutil.copy(path, tmp_path / "bucket" / "pool.arrow")
    remote = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    monkeypatch.setattr(location, "filesystem_from_uri", lambda uri: (remote, uri.split("://", 1)[1]))
    job = _job("s3://bucket/pool.arrow", tmp_path, output="s3://bucket/runs/r1")
    result = run_job(job, progress=False)
    assert result.out_dir == "s3://bucket/runs/r1"
    assert _table(tmp_path / "bucket" / "runs" / "r1").equals(expected)
    manifest = json.loads((tmp_path / "bucket" / "runs" / "r1" / "manifest.json").read_text())
    assert manifest["pool"]["path"] == "s3://bucket/pool.arrow" and manifest["n_selected"] == 150
    with pytest.raises(AlscaleError, match="output s3://bucket/runs/r1 already holds a selection"):
        run_job(job, progress=False)


def test_a_second_job_on_the_same_output_refuses_and_a_stale_lock_is_taken_over(lp_pool, tmp_path):
    import platform
    import subprocess

    from alscale.errors import AlscaleError
    from alscale.runtime.output import LOCK_FILE

    path, _, _ = lp_pool
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen(["sleep", "60"])  # a live process "running" another job
    try:
        (out / LOCK_FILE).write_text(f"{other.pid} {platform.node()} 2026-11-27T10:00:00Z\n")
        with pytest.raises(AlscaleError, match=rf"output .*out is in use by another alscale job \(pid {other.pid}"):
            run_job(_job(path, tmp_path), progress=False)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        other.kill()
        other.wait()
    # The holder is gone (a killed driver): the lock is taken over and released at the end.
    run_job(_job(path, tmp_path), progress=False)
    assert (out / "selection.parquet").exists() and not (out / LOCK_FILE).exists()

