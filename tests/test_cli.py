"""The CLI: bad input is one line on stderr, exit code 2, and no output directory left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

from alscale.pool import pool_table, write_table
from tests.conftest import log_softmax

ROOT = Path(__file__).resolve().parents[1]


def alscale(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "alscale.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def _write_job(tmp_path: Path, pool: str, extra: str = "") -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(
        "# test job\n"
        f"pool: {{path: {pool}}}\n"
        "strategy: {name: entropy, budget: 5}\n"
        "runtime: {executor: local, shards: 2}\n"
        f"output: {tmp_path / 'out'}\n" + extra
    )
    return job


@pytest.fixture
def good_pool(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "good.arrow"
    write_table(pool_table(np.arange(50, dtype=np.int64), log_probs_N_K_C=log_softmax(rng.normal(size=(50, 1, 3)))),
                str(path))
    return path


def test_run_prints_summary_and_writes(tmp_path, good_pool):
    job = _write_job(tmp_path, str(good_pool))
    proc = alscale("run", str(job), "strategy.budget=7", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "selected 7 of 50 rows with entropy" in proc.stdout
    assert (tmp_path / "out" / "selection.parquet").exists() and (tmp_path / "out" / "manifest.json").exists()
    proc = alscale("validate", str(job), cwd=tmp_path)
    assert proc.returncode == 0 and "valid" in proc.stdout


def test_run_json_summary_for_scripts(tmp_path, good_pool):
    import json

    job = _write_job(tmp_path, str(good_pool))
    proc = alscale("run", str(job), "--json", "strategy.budget=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["n_selected"] == 4 and summary["strategy"] == "entropy" and len(summary["row_ids"]) == 4
    assert set(summary["phase_seconds"]) >= {"read", "select", "write"} and summary["cache"] is None
    assert proc.stderr == ""  # no progress bar, no log lines


def _assert_clean_failure(proc, tmp_path, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("alscale: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_row_id(tmp_path):
    feather.write_feather(pa.table({"id": [1, 2]}), tmp_path / "p.arrow", compression="uncompressed")
    proc = alscale("run", str(_write_job(tmp_path, str(tmp_path / "p.arrow"))), cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path, "p.arrow", "row_id")


def test_duplicate_row_id(tmp_path):
    lp = log_softmax(np.zeros((4, 1, 3)))
    write_table(pool_table(np.array([1, 2, 3, 2], dtype=np.int64), log_probs_N_K_C=lp), str(tmp_path / "p.arrow"))
    proc = alscale("run", str(_write_job(tmp_path, str(tmp_path / "p.arrow"))), cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path, "p.arrow", "row_id", "2")


def test_nan_in_log_probs_names_the_row(tmp_path):
    lp = log_softmax(np.zeros((40, 1, 3)))
    lp[33, 0, 1] = np.nan
    write_table(pool_table(np.arange(100, 140, dtype=np.int64), log_probs_N_K_C=lp), str(tmp_path / "p.arrow"))
    proc = alscale("run", str(_write_job(tmp_path, str(tmp_path / "p.arrow"))), cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path, "log_probs", "133")


def test_inf_in_features_names_the_row(tmp_path):
    x = np.zeros((30, 4), dtype=np.float32)
    x[7, 2] = np.inf
    write_table(pool_table(np.arange(30, dtype=np.int64), features_N_D=x), str(tmp_path / "p.parquet"),
                format="parquet")
    job = _write_job(tmp_path, str(tmp_path / "p.parquet"), "model: {factory: linear, kwargs: {num_classes: 3}}\n")
    proc = alscale("run", str(job), cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path, "features", "row_id 7")


def test_mismatched_model_and_feature_dims(tmp_path):
    import torch

    from alscale.scoring import ModelSpec, build_model

    ckpt = tmp_path / "m.pt"
    torch.save(build_model(ModelSpec("linear", {"num_classes": 3}), in_features=8).state_dict(), ckpt)
    x = np.zeros((30, 16), dtype=np.float32)
    write_table(pool_table(np.arange(30, dtype=np.int64), features_N_D=x), str(tmp_path / "p.arrow"))
    job = _write_job(tmp_path, str(tmp_path / "p.arrow"),
                     f"model: {{factory: linear, kwargs: {{num_classes: 3}}, checkpoint: {ckpt}}}\n")
    proc = alscale("run", str(job), cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path, "m.pt")


def test_budget_not_positive(tmp_path, good_pool):
    proc = alscale("run", str(_write_job(tmp_path, str(good_pool))), "strategy.budget=0", cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path, "strategy.budget must be a positive integer; got 0")


def test_unknown_strategy_lists_valid_names(tmp_path, good_pool):
    proc = alscale("run", str(_write_job(tmp_path, str(good_pool))), "strategy.name=entropi", cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path, "unknown strategy 'entropi'", "entropy", "bald", "softrank")


def test_malformed_yaml(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("pool: {path: x\nstrategy: [\n")
    proc = alscale("run", str(job), cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path, "job.yaml", "malformed YAML at line")


def test_missing_pool_file(tmp_path):
    proc = alscale("run", str(_write_job(tmp_path, str(tmp_path / "nowhere.arrow"))), cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path, "nowhere.arrow")


def test_strategy_needing_samples_on_single_pass_pool(tmp_path, good_pool):
    proc = alscale("run", str(_write_job(tmp_path, str(good_pool))), "strategy.name=bald", cwd=tmp_path)
    _assert_clean_failure(proc, tmp_path, "bald", "K")


def test_pool_commands(tmp_path):
    proc = alscale("pool", "synth", "s.arrow", "--rows", "1000", "--dim", "8", "--classes", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = alscale("pool", "info", "s.arrow", cwd=tmp_path)
    assert proc.returncode == 0 and "1,000" in proc.stdout.replace("1000", "1,000")
    proc = alscale("pool", "synth", "s2.arrow", "--rows", "0", "--dim", "8", "--classes", "3", cwd=tmp_path)
    assert proc.returncode == 2 and "--rows" in proc.stderr
    proc = alscale("strategies", cwd=tmp_path)
    assert proc.returncode == 0 and "softrank" in proc.stdout
