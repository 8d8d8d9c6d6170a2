"""A shard worker killed (SIGKILL) mid-job is restarted and rebuilt by replaying its calls;
the job completes with the selection of an undisturbed run."""

from __future__ import annotations

import os
import signal
import threading

import pyarrow.parquet as pq
import pytest

from alscale.errors import WorkerLostError
from alscale.jobspec import validate_job
from alscale.pool import mnist_pool
from alscale.runtime.coordinator import run_job
from tests.runtime.killing import kill_when


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return mnist_pool(str(tmp_path_factory.mktemp("restart") / "mnist.arrow"), rows=3000).path


def _kill_when(title: str, killed: list, timeout: float = 120) -> threading.Thread:
    """Kill the first worker process of this session's Ray running ``title``."""
    return kill_when(title, killed, timeout=timeout)


def _job(pool, out, strategy, executor, budget=12):
    return validate_job({
        "pool": {"path": pool},
        "model": {"factory": "mnist_cnn", "kwargs": {"num_classes": 10}, "mc_samples": 4, "batch_size": 128},
        "strategy": {"name": strategy, "budget": budget},
        "runtime": {"executor": executor, "shards": 2, "chunk_rows": 300},
        "seed": 5, "output": str(out)})


@pytest.mark.parametrize(("strategy", "phase", "budget"), [("kcenter", "score_chunk", 12), ("kcenter", "call", 300),
                                                           ("batchbald", "call", 40), ("badge", "call", 1000)])
def test_killed_worker_gives_the_undisturbed_selection(images, tmp_path, ray_session, caplog, strategy, phase,
                                                       budget):
    run_job(_job(images, tmp_path / "local", strategy, "local", budget), progress=False)
    killed: list = []
    thread = _kill_when(phase, killed)
    run_job(_job(images, tmp_path / "ray", strategy, "ray", budget), progress=False)
    thread.join(1)
    assert killed, f"no worker was seen running {phase}"
    assert "restarting it and replaying" in caplog.text
    expected = pq.read_table(tmp_path / "local" / "selection.parquet")
    assert pq.read_table(tmp_path / "ray" / "selection.parquet").equals(expected)


def test_more_deaths_than_max_restarts_fail_cleanly(ray_session):
    from alscale.runtime.ray_executor import RayExecutor

    executor = RayExecutor(2, max_restarts=0)
    try:
        pid = ray_session.get(executor.actors[1].__ray_call__.remote(lambda self: os.getpid()))
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError, match="shard worker 1 died during ready"):
            executor.map("ready", [()] * 2)
    finally:
        executor.close()
