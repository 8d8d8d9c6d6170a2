"""Pools larger than the worker memory budget are streamed shard by shard, chunk by chunk
(``runtime.memory_budget``), with the selection of a run that holds everything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from alscale.errors import AlscaleError
from alscale.jobspec import JobError, validate_job
from alscale.pool import mnist_pool, pool_table, write_table
from alscale.runtime.coordinator import run_job
from alscale.runtime.memory import parse_bytes
from tests.conftest import log_softmax

MIB = 1 << 20


def _lp_pool(path: Path, n: int, *, k: int = 20, c: int = 10, rows_per_batch: int = 2048, emb: int = 0) -> Path:
    rng = np.random.default_rng(n)
    lp = np.empty((n, k, c), np.float32)
    for lo in range(0, n, 20_000):
        lp[lo:lo + 20_000] = log_softmax(rng.normal(size=(min(20_000, n - lo), k, c)) * 2)
    e = rng.normal(size=(n, emb)).astype(np.float32) if emb else None
    write_table(pool_table(np.arange(n, dtype=np.int64) * 5 + 1, log_probs_N_K_C=lp, embeddings_N_D=e), str(path),
                format="parquet", rows_per_batch=rows_per_batch)
    return path


def _peak_rss_mib(job: Path, out: Path, *over: str) -> tuple[int, str]:
    """Peak RSS (MiB) of ``alscale run`` in a fresh process (measured by a parent that only waits)."""
    probe = ("import resource, subprocess, sys\n"
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
             "print(r.stderr[-400:], file=sys.stderr)\n")
    cmd = [sys.executable, "-c", probe, sys.executable, "-m", "alscale.cli", "run", str(job), "--out", str(out),
           "--no-progress", *over]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    rc, peak = (int(v) for v in r.stdout.split())
    return (peak if rc == 0 else -rc), r.stderr


def test_a_pool_several_times_the_budget_streams_within_it(tmp_path):
    big = _lp_pool(tmp_path / "big.parquet", 200_000)  # 160 MB of log-probs (K=20, C=10)
    tiny = _lp_pool(tmp_path / "tiny.parquet", 2_000)
    job = tmp_path / "job.yaml"
    job.write_text(f"pool: {{path: {big}}}\nstrategy: {{name: bald, budget: 1000}}\n"
                   "runtime: {executor: local, shards: 2}\n")
    budget = 32 * MIB  # per worker; the local executor's two workers share the process: 64 MiB
    pool_bytes = 200_000 * 20 * 10 * 4
    assert pool_bytes > 2 * 2 * budget

    base, err = _peak_rss_mib(job, tmp_path / "o0", f"pool.path={tiny}", "runtime.memory_budget=32MiB")
    assert base > 0, err
    streamed, err = _peak_rss_mib(job, tmp_path / "o1", "runtime.memory_budget=32MiB")
    assert streamed > 0, err
    whole, err = _peak_rss_mib(job, tmp_path / "o2")
    assert whole > 0, err
    # The run that loads its shards holds the log-probs (and more); the streamed one stays
    # within twice its budget above the same program on a tiny pool (allocators keep some
    # freed pages; the budget counts arrays).
    assert whole - base > pool_bytes / MIB, (base, streamed, whole)
    assert streamed - base < 2 * 2 * budget / MIB, (base, streamed, whole)
    assert pq.read_table(tmp_path / "o1" / "selection.parquet").equals(
        pq.read_table(tmp_path / "o2" / "selection.parquet"))
    memory = json.loads((tmp_path / "o1" / "manifest.json").read_text())["memory"]
    assert memory["streamed"] and memory["kept"] == {"base_score": "bald", "log_probs": False, "embeddings": False}
    assert memory["chunk_rows"] < 100_000


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    lp = _lp_pool(d / "lp.parquet", 3_000, k=4, c=5, rows_per_batch=64, emb=8)
    rng = np.random.default_rng(2)
    feats = d / "feat.arrow"
    features_N_D = rng.normal(size=(2_000, 12)).astype(np.float32)
    write_table(pool_table(np.arange(2_000, dtype=np.int64), features_N_D=features_N_D), str(feats), rows_per_batch=300)
    return lp, feats


def _job(pool: Path, out: Path, strategy: str, budget: int = 40, model: dict | None = None, **runtime):
    raw = {"pool": {"path": str(pool)}, "strategy": {"name": strategy, "budget": budget},
           "runtime": {"executor": "local", "shards": 3, **runtime}, "seed": 5, "output": str(out)}
    if model:
        raw["model"] = model
    return validate_job(raw)


MLP = {"factory": "mlp", "kwargs": {"num_classes": 4, "hidden": 16}, "mc_samples": 4}


@pytest.mark.parametrize("strategy, model, mem", [
    ("bald", None, "192KiB"), ("power", None, "192KiB"), ("random", None, "192KiB"), ("kcenter", None, "192KiB"),
    ("badge", None, "512KiB"), ("batchbald", None, "512KiB"),
    ("entropy", MLP, "192KiB"), ("kcenter", MLP, "192KiB"), ("softrank", MLP, "192KiB"),
])
def test_streamed_selection_equals_the_resident_one(small, tmp_path, strategy, model, mem):
    lp, feats = small
    pool = feats if model else lp
    budget = 4 if strategy == "batchbald" else 40
    whole = run_job(_job(pool, tmp_path / "a", strategy, budget, model=model), progress=False)
    streamed = run_job(_job(pool, tmp_path / "b", strategy, budget, model=model, memory_budget=mem), progress=False)
    assert streamed.selection.indices_B.tolist() == whole.selection.indices_B.tolist()
    np.testing.assert_array_equal(streamed.selection.scores_B, whole.selection.scores_B)
    assert streamed.manifest["memory"]["chunk_rows"] < 1000  # many chunks per shard


def test_streamed_selection_on_ray_equals_local(small, tmp_path, ray_session):
    lp, _ = small
    local = run_job(_job(lp, tmp_path / "a", "power", memory_budget="192KiB"), progress=False)
    ray = run_job(_job(lp, tmp_path / "b", "power", memory_budget="192KiB", executor="ray"), progress=False)
    assert ray.selection.indices_B.tolist() == local.selection.indices_B.tolist()


def test_streamed_image_pool_equals_resident(tmp_path):
    pool = tmp_path / "img.arrow"
    mnist_pool(str(pool), rows=300, images=True)
    model = {"factory": "mnist_cnn", "mc_samples": 3, "transform": "pixels"}
    whole = run_job(_job(pool, tmp_path / "a", "bald", budget=10, model=model), progress=False)
    streamed = run_job(_job(pool, tmp_path / "b", "bald", budget=10, model=model, memory_budget="2MiB"),
                       progress=False)
    assert streamed.selection.indices_B.tolist() == whole.selection.indices_B.tolist()


def test_a_budget_that_cannot_hold_the_state_is_a_clear_error_before_any_work(small, tmp_path):
    lp, _ = small
    with pytest.raises(AlscaleError, match=r"runtime.memory_budget 8.0 KiB per worker cannot hold what strategy "
                                           r"kcenter keeps for a shard of 1,000 rows .* use runtime.shards >= \d+"):
        run_job(_job(lp, tmp_path / "o", "kcenter", memory_budget="8KiB"), progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(AlscaleError, match=r"has row groups of .* rewrite the pool with smaller row groups"):
        run_job(_job(lp, tmp_path / "o", "bald", memory_budget="80KiB"), progress=False)
    assert not (tmp_path / "o").exists()


def test_memory_budget_values():
    assert parse_bytes("4GiB") == 4 << 30 and parse_bytes("512MB") == 512_000_000
    assert parse_bytes(1_000_000) == 1_000_000 and parse_bytes("1.5 MiB") == 1_572_864
    for bad in ("lots", "-1GB", 0, True, "4 parsecs", float("inf")):
        assert parse_bytes(bad) is None
    with pytest.raises(JobError, match=r"runtime.memory_budget must be a size per worker such as 4GiB"):
        validate_job({"pool": {"path": "p.arrow"}, "strategy": {"name": "entropy", "budget": 1},
                      "runtime": {"memory_budget": "lots"}})


def test_streamed_quotas_and_seals_equal_the_resident_selection(small, tmp_path):
    lp, _ = small
    lab = tmp_path / "labeled.csv"
    lab.write_text("row_id\n" + "\n".join(str(i * 5 + 1) for i in range(0, 3000, 97)) + "\n")
    runs = []
    for mem in (None, "512KiB"):
        raw = {"pool": {"path": str(lp)}, "labeled": {"path": str(lab)},
               "strategy": {"name": "bald", "budget": 30, "quotas": {"max": 8}, "seals": 40},
               "runtime": {"executor": "local", "shards": 3, "memory_budget": mem}, "seed": 5}
        runs.append(run_job(validate_job(raw), out_dir=tmp_path / str(mem), progress=False))
    assert runs[1].manifest["memory"]["kept"]["log_probs"] is True
    assert runs[1].selection.indices_B.tolist() == runs[0].selection.indices_B.tolist()
    assert max(runs[0].manifest["quotas"]["picks_per_class"]) <= 8
