"""``alscale submit`` to a multi-node cluster that loses whole nodes (issue 18.9).

The cluster is real and on this machine, laid out like ``cluster.yaml``: a head with the
dashboard and Jobs API and no CPUs for tasks, and four 1-CPU worker nodes (each a ``ray
start --block`` in its own session, so a node is lost whole: raylet, agents and shard workers
SIGKILLed at once), fast node-death detection, token auth. Everything a user sees
goes through the CLI as a subprocess: ``alscale submit`` (following the job), ``alscale
status`` and ``alscale logs``; the node to kill is the one whose shard worker is inside the
method named (its process title).

1. With room: a model-scored BatchBALD job (2 shards) loses a worker's node while scoring,
   once four of its 20 chunks are in the chunk cache, and another node while selecting. It must
   SUCCEED with the local executor's selection, the finished chunks read back from the
   cache, and the manifest and logs naming both lost nodes and the recovery seconds.
2. Without room (two nodes left, both busy): a BatchBALD job loses a node mid-selection and
   must FAIL within ``startup_timeout_s`` plus detection, with one ``alscale: failed:`` line
   naming the lost node and the fix, in the submit output, in ``alscale status`` and in
   ``alscale logs``, and no selection written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from alscale.pool import mnist_pool, synth_pool
from tests.runtime.loopback_head import FAST_HEALTH_CHECKS, LoopbackCluster, client_env

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.ray


def _job(pool: Path, strategy: str, budget: int, *, model: bool, timeout_s: float) -> dict:
    job = {"pool": {"path": str(pool)}, "strategy": {"name": strategy, "budget": budget},
           "runtime": {"executor": "ray", "shards": 2, "chunk_rows": 200, "cpus_per_worker": 1,
                       "startup_timeout_s": timeout_s}, "seed": 5}
    if model:
        job["model"] = {"factory": "mnist_cnn", "kwargs": {"num_classes": 10}, "mc_samples": 4, "batch_size": 125}
    return job


def _alscale(args: list[str], env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "alscale"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


class Killer(threading.Thread):
    """Kill, in turn, each ``(method, ready)`` target's node: the first worker node whose shard
    worker runs ``ShardWorker.<method>`` once ``ready()`` holds."""

    def __init__(self, cluster: LoopbackCluster, targets: list, timeout: float = 240) -> None:
        super().__init__(daemon=True)
        self.cluster, self.targets, self.timeout = cluster, targets, timeout
        self.killed: list[dict] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        for method, ready in self.targets:
            node = None
            while node is None and time.monotonic() < deadline:
                if ready():
                    node = self.cluster.busy_node(f"ray::ShardWorker.{method}")
                if node is None:
                    time.sleep(0.005)
            if node is None:
                return
            node_id = node.node_id
            self.cluster.kill(node)
            self.killed.append({"during": method, "node_id": node_id, "t": time.monotonic()})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The cluster (started in the background), the pools, and the with-room job's local selection."""
    root = tmp_path_factory.mktemp("submit-lost-node")
    env = client_env(BIN)
    cluster = LoopbackCluster(BIN, env, root, head_cpus=0, system_config=FAST_HEALTH_CHECKS)
    try:
        images = Path(mnist_pool(str(root / "mnist.arrow"), rows=4000).path)
        lp = Path(synth_pool(str(root / "lp.arrow"), rows=4000, dim=4, classes=10, log_probs_samples=5, seed=1).path)
        room = _job(images, "batchbald", 40, model=True, timeout_s=120)
        (root / "room.yaml").write_text(yaml.safe_dump(room))
        (root / "noroom.yaml").write_text(yaml.safe_dump(_job(lp, "batchbald", 60, model=False, timeout_s=10)))
        cluster.wait_for_head()  # (Ray gives a node 30 s to register: one at a time on a loaded machine)
        nodes = cluster.add_workers(4)
        local = _alscale(["run", "room.yaml", "runtime.executor=local", "--out", str(root / "local"),
                          "--no-progress"], env, root)
        assert local.returncode == 0, local.stderr[-2000:]
        cluster.wait_for_workers(nodes)
        yield cluster, env, root
    finally:
        cluster.close()


def _submit_with_kills(cluster, env, root, job: str, out: Path, targets: list) -> tuple:
    killer = Killer(cluster, targets)
    killer.start()
    t0 = time.monotonic()
    sub = _alscale(["submit", job, "--address", cluster.url, "--out", str(out)], env, root)
    seconds = time.monotonic() - t0
    (root / f"{Path(job).stem}-submit.log").write_text(sub.stdout + sub.stderr)
    killer.join(5)
    return sub, killer.killed, seconds


def test_a_submitted_job_survives_losing_nodes_while_scoring_and_selecting(setup):
    cluster, env, root = setup
    out = root / "room"
    cached = lambda: len(list((out / "cache").glob("rows-*.json"))) >= 4  # noqa: E731
    sub, killed, seconds = _submit_with_kills(cluster, env, root, "room.yaml", out,
                                              [("score_chunk", cached), ("call", lambda: True)])
    assert [k["during"] for k in killed] == ["score_chunk", "call"], (killed, sub.stdout[-3000:])
    assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-2000:]
    sid = sub.stdout.split()[1]
    assert f"job {sid} SUCCEEDED" in sub.stdout
    assert pq.read_table(out / "selection.parquet").equals(pq.read_table(root / "local" / "selection.parquet"))
    manifest = json.loads((out / "manifest.json").read_text())
    recovery = manifest["runtime"]["recovery"]
    assert recovery["restarts"] >= 2 and len(recovery["recovery_seconds"]) == recovery["restarts"], recovery
    died = [ln for ln in sub.stdout.splitlines() if "shard worker" in ln and " died " in ln]
    assert len(died) == 2 and "during score_chunk" in died[0], died  # the first loss noticed while scoring
    for k in killed:  # each lost node is named, in the manifest and in the job's log
        assert any(k["node_id"][:12] in lost for lost in recovery["lost_nodes"]), (k, recovery)
        assert f"(node {k['node_id'][:12]})" in sub.stdout
    assert sub.stdout.count("shard worker 0 is back") + sub.stdout.count("shard worker 1 is back") == len(killed)
    cache = manifest["cache"]
    assert len(cache["recovered"]) >= 1, cache  # finished chunks of the lost worker came back from the cache
    assert len(cache["computed"]) + len(cache["recovered"]) == 20, cache  # no chunk scored twice
    status = _alscale(["status", sid, "--address", cluster.url], env, root)
    assert status.returncode == 0 and status.stdout.startswith(f"{sid}: SUCCEEDED"), status.stdout
    logs = _alscale(["logs", sid, "--address", cluster.url], env, root)
    assert "restarting it" in logs.stdout and "selected 40 of 4,000 rows with batchbald" in logs.stdout
    print(json.dumps({"submit_s": round(seconds, 1), "recovery": recovery,
                      "chunks": {k: len(v) for k, v in cache.items() if isinstance(v, list)}}))


def test_a_submitted_job_without_room_fails_in_bounded_time_naming_the_node(setup):
    cluster, env, root = setup
    while len(cluster.workers) > 2:  # two nodes left (the first test lost two of four): no spare
        cluster.kill(cluster.workers[-1])
    time.sleep(2)  # the removed nodes are seen dead before the job places its workers
    out = root / "noroom"
    sub, killed, _ = _submit_with_kills(cluster, env, root, "noroom.yaml", out, [("call", lambda: True)])
    assert killed, sub.stdout[-3000:]
    after_kill = time.monotonic() - killed[0]["t"]
    assert sub.returncode == 1, sub.stdout[-3000:] + sub.stderr[-2000:]
    sid = sub.stdout.split()[1]
    assert f"job {sid} FAILED" in sub.stdout
    assert after_kill < 90, after_kill
    node = killed[0]["node_id"][:12]
    failed = [ln for ln in sub.stdout.splitlines() if ln.startswith("alscale:")]
    assert len(failed) == 1 and node in failed[0] and "add a node" in failed[0], sub.stdout[-3000:]
    status = _alscale(["status", sid, "--address", cluster.url], env, root)
    assert status.returncode == 0 and status.stdout.count("\n") == 1, status.stdout
    assert status.stdout.startswith(f"{sid}: FAILED") and node in status.stdout and "add a node" in status.stdout
    logs = _alscale(["logs", sid, "--address", cluster.url], env, root)
    assert failed[0] in logs.stdout.splitlines()
    assert not (out / "selection.parquet").exists() and not (out / "manifest.json").exists()
    print(json.dumps({"failed_after_kill_s": round(after_kill, 1)}))


def test_status_shows_a_failed_job_in_one_line():
    from alscale.runtime.ray_jobs import one_line

    ray_message = ("Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
                   "WARNING alscale.runtime.ray_executor: shard worker 0 died\n"
                   "alscale: failed: shard worker 0 could not be restarted ...; add a node\n")
    assert one_line(ray_message) == ("exit code 1: alscale: failed: shard worker 0 could not be restarted ...; "
                                     "add a node")
    assert one_line("Job finished successfully.") == "Job finished successfully."
    assert one_line("Job entrypoint command failed with exit code 137, last available logs:\nKilled\n") == (
        "Job entrypoint command failed with exit code 137, last available logs; `alscale logs` shows the rest")
    assert one_line("") == ""
