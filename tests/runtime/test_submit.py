"""``alscale submit`` against a real Ray head on loopback (``ray start --head``), token auth on.

The head runs in its own process group with its own token; the CLI runs as a subprocess,
exactly as a user would run it. The submitted job's selection must equal ``alscale run``'s.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from alscale.pool import synth_pool
from tests.runtime.loopback_head import client_env, loopback_head

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    env = client_env(BIN)
    root = tmp_path_factory.mktemp("head")
    with loopback_head(BIN, env, root / "head.log") as url:
        yield url, env


def _alscale(args, env, cwd, timeout=600):
    return subprocess.run([str(BIN / "alscale"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("submit")
    synth_pool(str(root / "pool.arrow"), rows=20_000, dim=16, classes=4, seed=2, log_probs_samples=1)
    job = {"pool": {"path": "pool.arrow"}, "strategy": {"name": "entropy", "budget": 50},
           "runtime": {"executor": "ray", "shards": 2}, "seed": 1, "output": "out-run"}
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    return root


def test_submit_gives_the_same_selection_as_run(ray_head, demo_job):
    url, env = ray_head
    sub = _alscale(["submit", "job.yaml", "--address", url, "--out", str(demo_job / "out-submit")], env, demo_job)
    assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
    sid = sub.stdout.split()[1]
    assert sid.startswith("alscale-job-") and f"job {sid} SUCCEEDED" in sub.stdout
    assert "selected 50 of 20,000 rows with entropy" in sub.stdout  # the driver's own summary, streamed
    run = _alscale(["run", "job.yaml", "runtime.executor=local", "--no-progress"], env, demo_job)
    assert run.returncode == 0, run.stderr
    submitted = pq.read_table(demo_job / "out-submit" / "selection.parquet")
    local = pq.read_table(demo_job / "out-run" / "selection.parquet")
    assert submitted.equals(local) and submitted.num_rows == 50
    status = _alscale(["status", sid, "--address", url], env, demo_job)
    assert status.returncode == 0 and f"{sid}: SUCCEEDED" in status.stdout
    logs = _alscale(["logs", sid, "--address", url], env, demo_job)
    assert "selected 50 of 20,000 rows" in logs.stdout
    assert env["RAY_AUTH_TOKEN"] not in logs.stdout + sub.stdout
    manifest = (demo_job / "out-submit" / "manifest.json").read_text()
    assert env["RAY_AUTH_TOKEN"] not in manifest


def test_a_request_the_cluster_cannot_place_fails_clearly_instead_of_hanging(ray_head, demo_job):
    url, env = ray_head
    sub = _alscale(["submit", "job.yaml", "--address", url, "--out", str(demo_job / "out-gpu"),
                    "runtime.gpus_per_worker=1", "runtime.startup_timeout_s=5"], env, demo_job)
    assert sub.returncode == 1, sub.stdout[-2000:]
    assert "FAILED" in sub.stdout
    assert "could not start 2 of 2 shard workers within 5 s" in sub.stdout
    assert "0 GPUs" in sub.stdout and not (demo_job / "out-gpu" / "selection.parquet").exists()


def test_missing_token_and_bad_ids_are_clear_errors(ray_head, demo_job):
    url, env = ray_head
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    no_token["RAY_AUTH_MODE"] = "disabled"
    res = _alscale(["status", "nope", "--address", url], no_token, demo_job)
    assert res.returncode == 2 and "authentication token" in res.stderr and res.stderr.count("\n") == 1
    res = _alscale(["status", "no-such-job", "--address", url], env, demo_job)
    assert res.returncode == 2 and "no such Ray job" in res.stderr
    res = _alscale(["submit", "job.yaml", "--address", url, "strategy.budget=0"], env, demo_job)
    assert res.returncode == 2 and "strategy.budget must be a positive integer" in res.stderr
    res = _alscale(["status", "x", "--address", "http://127.0.0.1:1"], env, demo_job)
    assert res.returncode == 2 and "cannot reach the Ray dashboard" in res.stderr


def test_no_wait_then_stop_and_follow_exit_code(ray_head, demo_job):
    url, env = ray_head
    sub = _alscale(["submit", "job.yaml", "--address", url, "--no-wait", "--out", str(demo_job / "out-stop"),
                    "runtime.gpus_per_worker=1", "runtime.startup_timeout_s=120"], env, demo_job)
    assert sub.returncode == 0 and sub.stdout.startswith("submitted alscale-job-"), sub.stderr
    sid = sub.stdout.split()[1]
    stop = _alscale(["stop", sid, "--address", url], env, demo_job)
    assert stop.returncode == 0 and f"{sid}: stop requested" in stop.stdout
    follow = _alscale(["logs", sid, "--follow", "--address", url], env, demo_job, timeout=120)
    assert follow.returncode == 3, follow.stdout[-2000:]
    status = _alscale(["status", sid, "--address", url], env, demo_job)
    assert f"{sid}: STOPPED" in status.stdout
