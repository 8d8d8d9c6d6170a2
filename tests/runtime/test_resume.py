"""Driver failure and resume: per-chunk caches of model outputs, ``alscale run --resume``.

The driver (``alscale run`` as a subprocess) is SIGKILLed during scoring and during the
selection; ``--resume`` gives the undisturbed selection byte for byte, reuses exactly the
chunks whose caches were complete at the kill, and scores only the rest. Damaged caches
(truncated, altered, foreign) are detected, reported and scored again, never used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from alscale.jobspec import load_job
from alscale.pool import pool_table, write_table
from alscale.runtime.coordinator import run_job

N_ROWS, CHUNK = 40_000, 2_000
N_CHUNKS = N_ROWS // CHUNK


@pytest.fixture(scope="module")
def job_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_ROWS, 64)).astype(np.float32)
    write_table(pool_table(np.arange(N_ROWS, dtype=np.int64) * 3 + 7, features_N_D=x), str(d / "pool.arrow"),
                rows_per_batch=5000)
    job = d / "job.yaml"
    job.write_text(f"""
pool: {{path: {d / 'pool.arrow'}}}
model: {{factory: mlp, kwargs: {{num_classes: 10, hidden: 256}}, mc_samples: 10}}
strategy: {{name: kcenter, budget: 6000}}
runtime: {{executor: local, shards: 2, chunk_rows: {CHUNK}}}
seed: 3
""")
    return job


@pytest.fixture(scope="module")
def undisturbed(job_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("undisturbed") / "out"
    run_job(load_job(job_file), out_dir=out, progress=False)
    return out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alscale.cli", *args]


def _records(out: Path) -> set[tuple[int, int]]:
    """Row ranges whose cache record exists (the record is written after its data file)."""
    d = out / "cache"
    return {tuple(int(v) for v in f.stem.split("-")[1:]) for f in d.glob("rows-*.json")} if d.is_dir() else set()


def _kill_driver_when(cmd: list[str], ready, grace_s: float = 0.0, timeout_s: float = 120) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the driver ended before the kill point: {proc.stderr.read().decode()[-500:]}")
            if time.monotonic() > deadline:
                pytest.fail("the kill point was not reached in time")
            time.sleep(0.005)
        time.sleep(grace_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _finished_copy(undisturbed: Path, out: Path) -> Path:
    """A copy of the undisturbed run's directory (selection, manifest and all caches)."""
    shutil.copytree(undisturbed, out)
    return out


def _selection(out: Path):
    return pq.read_table(out / "selection.parquet").to_pydict()


def _resume(job_file: Path, out: Path, *extra: str) -> dict:
    r = subprocess.run(_cli("run", str(job_file), "--out", str(out), "--resume", "--no-progress", *extra),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "manifest.json").read_text())


def test_driver_killed_during_scoring_resumes_without_rescoring_finished_chunks(job_file, undisturbed, tmp_path):
    out = tmp_path / "out"
    _kill_driver_when(_cli("run", str(job_file), "--out", str(out), "--no-progress"),
                      lambda: len(_records(out)) >= 6)
    done_at_kill = _records(out)
    assert 6 <= len(done_at_kill) < N_CHUNKS, "the kill did not land during scoring"
    assert not (out / "manifest.json").exists()

    # Without --resume the interrupted directory is not silently started over.
    r = subprocess.run(_cli("run", str(job_file), "--out", str(out), "--no-progress"), capture_output=True, text=True)
    assert r.returncode == 2
    assert "cached scores of an interrupted run; pass --resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    manifest = _resume(job_file, out)
    assert {tuple(c) for c in manifest["cache"]["reused"]} == done_at_kill
    assert len(manifest["cache"]["computed"]) == N_CHUNKS - len(done_at_kill)
    assert manifest["cache"]["rejected"] == [] and manifest["resumed"] is True
    assert _selection(out) == _selection(undisturbed)
    assert not [f for f in out.rglob(".*") if f.name != ".alscale.lock"], "temporary files left behind"
    assert not (out / ".alscale.lock").exists()


def test_driver_killed_during_selection_rescores_nothing(job_file, undisturbed, tmp_path):
    out = tmp_path / "out"
    # All chunks cached, then 0.2 s into the k-center selection (which takes seconds here).
    _kill_driver_when(_cli("run", str(job_file), "--out", str(out), "--no-progress"),
                      lambda: len(_records(out)) == N_CHUNKS, grace_s=0.2)
    if (out / "manifest.json").exists():
        pytest.fail("the selection finished before the kill; make it longer (strategy.budget)")
    manifest = _resume(job_file, out)
    assert len(manifest["cache"]["reused"]) == N_CHUNKS and manifest["cache"]["computed"] == []
    assert _selection(out) == _selection(undisturbed)


def test_killed_between_selection_and_manifest_resumes(job_file, undisturbed, tmp_path):
    """The state a kill between the two final writes leaves: a selection without its manifest."""
    out = tmp_path / "out"
    _finished_copy(undisturbed, out)
    (out / "manifest.json").unlink()
    (out / ".selection.parquet.tmp-1-abcd").write_bytes(b"partial")  # a write cut off earlier
    manifest = _resume(job_file, out)
    assert len(manifest["cache"]["reused"]) == N_CHUNKS
    assert _selection(out) == _selection(undisturbed)
    assert not (out / ".selection.parquet.tmp-1-abcd").exists()
    # A finished directory is not rewritten by --resume alone.
    r = subprocess.run(_cli("run", str(job_file), "--out", str(out), "--resume"), capture_output=True, text=True)
    assert r.returncode == 2 and "already holds a finished selection" in r.stderr


def test_damaged_caches_are_detected_and_scored_again(job_file, undisturbed, tmp_path):
    out = tmp_path / "out"
    _finished_copy(undisturbed, out)
    (out / "manifest.json").unlink()
    (out / "selection.parquet").unlink()
    arrows = sorted((out / "cache").glob("rows-*.arrow"))
    # 1. truncated
    data = arrows[0].read_bytes()
    arrows[0].write_bytes(data[: len(data) // 2])
    # 2. one float altered, same size (only the checksum can tell)
    data = bytearray(arrows[5].read_bytes())
    data[len(data) // 2] ^= 0x40
    arrows[5].write_bytes(bytes(data))
    # 3. a record from another model
    meta = arrows[9].with_suffix(".json")
    rec = json.loads(meta.read_text())
    rec["fingerprint"] = "0" * 64
    meta.write_text(json.dumps(rec))
    # 4. a data file without its record (killed between the two writes)
    arrows[12].with_suffix(".json").unlink()

    manifest = _resume(job_file, out)
    cache = manifest["cache"]
    reasons = {Path(r["file"]).name: r["reason"] for r in cache["rejected"]}
    assert set(reasons) == {arrows[i].name for i in (0, 5, 9)}
    assert "truncated" in reasons[arrows[0].name]
    assert "sha256" in reasons[arrows[5].name]
    assert "fingerprint" in reasons[arrows[9].name]
    assert len(cache["computed"]) == 4 and len(cache["reused"]) == N_CHUNKS - 4
    assert _selection(out) == _selection(undisturbed)

    # The rewritten caches are valid: another resume (with --force, the selection exists) scores nothing.
    again = _resume(job_file, out, "--force")
    assert len(again["cache"]["reused"]) == N_CHUNKS and again["cache"]["rejected"] == []


def test_caches_of_another_model_are_not_used(job_file, undisturbed, tmp_path):
    out = tmp_path / "out"
    _finished_copy(undisturbed, out)
    (out / "manifest.json").unlink()
    over = ["model.kwargs.init_seed=1", "strategy.budget=100"]
    manifest = _resume(job_file, out, *over)
    assert manifest["cache"]["reused"] == [] and len(manifest["cache"]["rejected"]) == N_CHUNKS
    assert all("fingerprint" in r["reason"] for r in manifest["cache"]["rejected"])
    fresh = tmp_path / "fresh"
    run_job(load_job(job_file, over), out_dir=fresh, progress=False)
    assert _selection(out) == _selection(fresh)


def test_resume_with_another_strategy_and_the_ray_executor_reuses_the_scores(job_file, undisturbed, tmp_path,
                                                                            ray_session):
    """Caches depend on the model and pool, not on the strategy or executor."""
    out = tmp_path / "out"
    _finished_copy(undisturbed, out)
    over = ["strategy.name=badge", "strategy.budget=50", "runtime.executor=ray"]
    resumed = run_job(load_job(job_file, over), out_dir=out, force=True, resume=True, progress=False)
    assert len(resumed.manifest["cache"]["reused"]) == N_CHUNKS and resumed.manifest["cache"]["computed"] == []
    fresh = run_job(load_job(job_file, over[:2]), out_dir=tmp_path / "fresh", progress=False)
    assert resumed.selection.indices_B.tolist() == fresh.selection.indices_B.tolist()


def test_cache_off_writes_no_cache(job_file, tmp_path):
    out = tmp_path / "out"
    result = run_job(load_job(job_file, ["runtime.cache=false", "strategy.budget=10"]), out_dir=out, progress=False)
    assert not (out / "cache").exists() and result.manifest["cache"] is None
    assert set(os.listdir(out)) == {"manifest.json", "selection.parquet"}
