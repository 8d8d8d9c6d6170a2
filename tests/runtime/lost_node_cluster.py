"""Kill whole nodes of a multi-node Ray cluster on this machine during jobs (issue 18.9).

Run as a script by ``tests/runtime/test_lost_node.py`` (its own process: the cluster, its
raylets and their workers never mix with the test session's Ray)::

    python tests/runtime/lost_node_cluster.py OUT_DIR

A ``ray.cluster_utils.Cluster``: a head with no CPUs (the driver only) and three 1-CPU worker
nodes; jobs with two 1-CPU shard workers (spread over the nodes), so one node is spare.

1. With room: for scoring and for k-center / BADGE / BatchBALD selection, the node of shard
   worker 0 is killed (raylet and workers, no grace) when the job reaches a given call; the
   worker restarts on the spare node and the job must give the local executor's selection.
   A replacement node is added after each loss. Recorded: the recovery seconds, the
   calls replayed, the snapshots restored, the chunks read back from the cache.
2. Without room: the spare node is removed, then ``alscale run`` (a subprocess, as a user
   runs it) loses a worker's node mid-selection; it must exit 1 within its
   ``startup_timeout_s`` plus the node-death detection, with one line naming the node.

Writes ``OUT_DIR/result.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

#: Fast node-death detection (Ray's defaults take ~30 s to call a silent node dead).
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_timeout_ms": 500,
                 "health_check_failure_threshold": 4}
NODE = {"num_cpus": 1, "object_store_memory": 80 << 20}


def _job(pool: str, strategy: str, budget: int, executor: str, model: bool, address: str | None = None,
         timeout_s: float = 120) -> dict[str, Any]:
    raw: dict[str, Any] = {"pool": {"path": pool}, "strategy": {"name": strategy, "budget": budget},
                           "runtime": {"executor": executor, "shards": 2, "chunk_rows": 250},
                           "seed": 5}
    if executor == "ray":
        raw["runtime"].update({"cpus_per_worker": 1, "startup_timeout_s": timeout_s})
        if address:
            raw["runtime"]["address"] = address
    if model:
        raw["model"] = {"factory": "mnist_cnn", "kwargs": {"num_classes": 10}, "mc_samples": 2, "batch_size": 125}
    return raw


def _node_by_id(cluster: Any, node_id: str) -> Any:
    for node in cluster.worker_nodes:
        if node.node_id == node_id:
            return node
    raise LookupError(f"node {node_id} is not a worker node of this cluster")


class KillAtCall:
    """Wrap ``executor.map``: when ``method`` is called for the ``nth`` time (for each
    ``(method, nth)`` of ``kills``), first kill the whole node of shard worker 0 — mid-job:
    that call and every later one need the worker — wait until the cluster sees the node
    dead, then add a replacement node (room for the next loss)."""

    def __init__(self, cluster: Any, executor: Any, kills: list[tuple[str, int]]) -> None:
        self.cluster, self.executor, self.kills = cluster, executor, list(kills)
        self.seen: dict[str, int] = {}
        self.killed: list[dict[str, Any]] = []
        self._map = executor.map
        executor.map = self.map

    def map(self, method: str, args: Any) -> list:
        self.seen[method] = self.seen.get(method, 0) + 1
        if (method, self.seen[method]) in self.kills:
            import ray

            node = _node_by_id(self.cluster, self.executor._nodes[0])
            self.killed.append({"at": f"{method} #{self.seen[method]}", "node_id": node.node_id,
                                "ip": node.node_ip_address})
            self.cluster.remove_node(node, allow_graceful=False)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
                time.sleep(0.1)
            self.cluster.add_node(**NODE)
        return self._map(method, args)


def with_room(cluster: Any, pools: dict[str, str], out: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from alscale.jobspec import validate_job
    from alscale.runtime.coordinator import run_job
    from alscale.runtime.ray_executor import RayExecutor

    # One job loses a node while scoring and another while selecting (k-center).
    cases = [("scoring+kcenter", "kcenter", 100, True, [("score_chunk", 4), ("call", 1)]),
             ("badge", "badge", 60, False, [("call", 3)]), ("batchbald", "batchbald", 20, False, [("call", 6)])]
    results = []
    for name, strategy, budget, model, kills in cases:
        pool = pools["images" if model else "lp"]
        local = run_job(validate_job(_job(pool, strategy, budget, "local", model)), out_dir=out / f"{name}-local",
                        progress=False)
        executor = RayExecutor(2, cpus_per_worker=1, startup_timeout_s=120)
        hook = KillAtCall(cluster, executor, kills)
        t0 = time.monotonic()
        try:
            got = run_job(validate_job(_job(pool, strategy, budget, "ray", model)), out_dir=out / f"{name}-ray",
                          progress=False, executor=executor)
            stats = executor.replay_stats()
        finally:
            executor.close()
        cache = got.manifest.get("cache") or {}
        results.append({
            "case": name, "strategy": strategy, "killed": hook.killed, "job_s": round(time.monotonic() - t0, 2),
            "same_selection": pq.read_table(out / f"{name}-ray" / "selection.parquet").equals(
                pq.read_table(out / f"{name}-local" / "selection.parquet")),
            "same_as_local": list(got.selection.indices) == list(local.selection.indices),
            "restarts": stats["restarts"], "recovery_s": stats["recovery_seconds"],
            "replayed_calls": stats["replayed_calls"], "replayed_state_calls": stats["replayed_state_calls"],
            "snapshot_restores": stats["snapshot_restores"], "lost_nodes": stats["lost_nodes"],
            "chunks_recovered": len(cache.get("recovered", [])), "chunks_computed": len(cache.get("computed", [])),
        })
        print(json.dumps(results[-1]), flush=True)
    return results


def without_room(cluster: Any, pools: dict[str, str], out: Path) -> dict[str, Any]:
    """Two worker nodes, both busy; one is lost while ``alscale run`` selects: exit 1."""
    import yaml

    while len(cluster.worker_nodes) > 2:
        cluster.remove_node(sorted(cluster.worker_nodes, key=lambda n: n.node_id)[-1])
    cluster.wait_for_nodes()
    time.sleep(2)  # the removed nodes are seen dead before the job places its workers
    job = out / "noroom.yaml"
    job.write_text(yaml.safe_dump({**_job(pools["lp"], "batchbald", 60, "ray", False, cluster.address, timeout_s=15),
                                   "output": str(out / "noroom")}))
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    proc = subprocess.Popen([sys.executable, "-m", "alscale.cli", "run", str(job), "--force"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: dict[str, Any] = {}
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None and not killed:
        for node in list(cluster.worker_nodes):
            raylet = node.all_processes["raylet"][0].process.pid
            busy = subprocess.run(["pgrep", "-P", str(raylet), "-f", "ray::ShardWorker.call"], capture_output=True,
                                  text=True).stdout.split()
            if busy:
                killed = {"ip": node.node_ip_address, "node_id": node.node_id, "t": time.monotonic()}
                cluster.remove_node(node, allow_graceful=False)
                break
        time.sleep(0.02)
    try:
        stdout, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    return {"killed": killed.get("ip"), "killed_node": killed.get("node_id"), "exit": proc.returncode,
            "seconds_after_kill": round(time.monotonic() - killed["t"], 2) if killed else None,
            "stderr_lines": [ln for ln in stderr.splitlines() if ln.strip() and "(raylet)" not in ln
                             and not ln.startswith(("[", "\x1b"))],
            "stderr_tail": stderr[-3000:], "wrote_selection": (out / "noroom" / "selection.parquet").exists()}


def main(out: Path) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from alscale.pool import mnist_pool, synth_pool

    out.mkdir(parents=True, exist_ok=True)
    pools = {"images": mnist_pool(str(out / "mnist.arrow"), rows=2000).path,
             "lp": synth_pool(str(out / "lp.arrow"), rows=4000, dim=4, classes=10, log_probs_samples=5,
                              embedding_dim=16, seed=1).path}
    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 << 20,
                                                           "_system_config": SYSTEM_CONFIG})
    result: dict[str, Any] = {}
    try:
        for _ in range(3):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
        result["cluster_start_s"] = round(time.monotonic() - t0, 2)
        result["with_room"] = with_room(cluster, pools, out)
        result["without_room"] = without_room(cluster, pools, out)
    finally:
        (out / "result.json").write_text(json.dumps(result, indent=1))
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
