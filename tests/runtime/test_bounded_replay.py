"""A worker killed late in a long job is rebuilt from a bounded log: its load, its scored
chunks read back from the chunk cache, its last shard-state snapshot, and at most
``snapshot_every`` state calls after it (issue 15.4); the selection is the undisturbed one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from alscale.jobspec import validate_job
from alscale.pool import mnist_pool, synth_pool
from alscale.runtime.coordinator import run_job
from tests.runtime.killing import kill_when


@pytest.fixture(scope="module")
def lp_pool(tmp_path_factory):
    return synth_pool(str(tmp_path_factory.mktemp("replay") / "lp.arrow"), rows=3000, dim=4, classes=10,
                      log_probs_samples=5, seed=2).path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return mnist_pool(str(tmp_path_factory.mktemp("replay-mnist") / "mnist.arrow"), rows=3000).path


def _after(condition, then, timeout: float = 180) -> threading.Thread:
    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not condition():
            time.sleep(0.02)
        then()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_late_kill_replays_at_most_snapshot_every_state_calls(lp_pool, tmp_path, ray_session, caplog):
    from alscale.runtime.ray_executor import RayExecutor

    raw = {"pool": {"path": lp_pool}, "strategy": {"name": "batchbald", "budget": 30},
           "runtime": {"executor": "local", "shards": 2}, "seed": 3}
    expected = run_job(validate_job(raw), out_dir=tmp_path / "local", progress=False).selection
    executor = RayExecutor(2, snapshot_every=4)
    killed: list = []
    try:
        # Late: once four snapshots were taken, the next worker seen running a selection step dies.
        watcher = _after(lambda: executor.replay_stats()["snapshots"] >= 4, lambda: kill_when("call", killed))
        result = run_job(validate_job({**raw, "runtime": {"executor": "ray", "shards": 2}}), out_dir=tmp_path / "ray",
                         progress=False, executor=executor)
        watcher.join(5)
        stats = executor.replay_stats()
    finally:
        executor.close()
    assert killed, "no worker was killed late in the selection"
    assert stats["restarts"] == 1
    assert stats["snapshot_restores"] == 1
    assert 0 <= stats["replayed_state_calls"] <= 4
    # The undisturbed run makes far more state calls than were replayed.
    assert result.manifest["round_trips"] > 3 * 4
    assert list(result.selection.indices) == list(expected.indices)
    assert list(result.selection.scores) == list(expected.scores)
    assert pq.read_table(tmp_path / "ray" / "selection.parquet").equals(
        pq.read_table(tmp_path / "local" / "selection.parquet"))


def test_a_kill_late_in_scoring_reads_the_finished_chunks_back_from_the_cache(images, tmp_path, ray_session):
    from alscale.runtime.ray_executor import RayExecutor

    raw = {"pool": {"path": images},
           "model": {"factory": "mnist_cnn", "kwargs": {"num_classes": 10}, "mc_samples": 2, "batch_size": 150},
           "strategy": {"name": "kcenter", "budget": 20}, "runtime": {"executor": "local", "shards": 2,
                                                                       "chunk_rows": 150},
           "seed": 4}
    run_job(validate_job(raw), out_dir=tmp_path / "local", progress=False)
    cache = Path(tmp_path / "ray" / "cache")
    executor = RayExecutor(2)
    killed: list = []
    try:
        # Late: once six chunks (of 20) are in the cache, the next worker seen scoring dies.
        watcher = _after(lambda: len(list(cache.glob("*.json"))) >= 6 if cache.exists() else False,
                         lambda: kill_when("score_chunk", killed))
        result = run_job(validate_job({**raw, "runtime": {**raw["runtime"], "executor": "ray"}}),
                         out_dir=tmp_path / "ray", progress=False, executor=executor)
        watcher.join(5)
        stats = executor.replay_stats()
    finally:
        executor.close()
    assert killed and stats["restarts"] == 1
    info = result.manifest["cache"]
    recovered = info.get("recovered", [])
    assert len(recovered) >= 2, info  # the dead worker's finished chunks were not scored again
    every = sorted(map(tuple, info["computed"] + recovered))
    # Every chunk of the pool is accounted for; at most the chunk in flight was scored twice.
    assert len(set(every)) == 20 and len(every) - len(set(every)) <= 1
    assert pq.read_table(tmp_path / "ray" / "selection.parquet").equals(
        pq.read_table(tmp_path / "local" / "selection.parquet"))
