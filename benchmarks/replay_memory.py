"""Driver RSS, object-store use and the restart log during long selections on Ray (issue 15.4).

For each scenario (k-center B = 10,000 over a 1M-row pool with 32-dim embeddings, every 200th
row labelled; BatchBALD b = 100 over K = 20, C = 10 log-probs), one job runs on a local Ray
with two shard actors while a thread samples, every ``--every`` seconds:

- the driver's RSS (``/proc/self/status``),
- the object store's bytes in use (the raylet's store stats, as ``ray memory --stats-only``),
- the shard actors' RSS (``/proc/<pid>/status`` of the ``ray::ShardWorker`` processes),
- the executor's restart log: the calls a restarted worker would replay and their bytes
  (``RayExecutor.replay_stats()``; on code without it, measured from ``_history``).

After the job, worker 0 is SIGKILLed and one stateless call is made: the executor restarts it
and rebuilds its state; the recovery's wall time and the calls it replayed are recorded.

    .venv/bin/python benchmarks/replay_memory.py [--label before|after] [--kcenter-rows N] [--batchbald-rows N]
        [--batchbald-strategy batchbald|batchbald_prefilter]

To measure an older commit, run this script with that commit's worktree as the working
directory and on ``PYTHONPATH`` (``cd /path/to/old && PYTHONPATH=$PWD python
/path/to/this/replay_memory.py ...``): Ray puts the driver's working directory first on the
workers' ``sys.path``, so from another directory the workers would run that one's alscale (the
script checks that driver and workers import the same one).

Prints a table and writes ``benchmarks/results/replay_memory-<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "bench"
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peakmem import status_bytes  # noqa: E402


def ensure_pool(rows: int, k: int, e: int) -> Path:
    path = DATA / f"pool-d8-k{k}-c10-e{e}-{rows}.arrow"
    if not path.exists():
        from alscale.pool import synth_pool

        DATA.mkdir(parents=True, exist_ok=True)
        synth_pool(str(path), rows=rows, dim=8, classes=10, seed=0, log_probs_samples=k, embedding_dim=e)
    return path


def ensure_labeled(rows: int, every: int) -> Path:
    path = DATA / f"labeled-every{every}-{rows}.parquet"
    if not path.exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        DATA.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"row_id": np.arange(0, rows, every, dtype=np.int64)}), path)
    return path


def _arg_bytes(obj: Any) -> int:
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if type(obj).__name__ == "ObjectRef":
        return 0  # counted in the object store
    if isinstance(obj, (tuple, list)):
        return sum(_arg_bytes(o) for o in obj)
    try:
        return len(pickle.dumps(obj))
    except Exception:
        return 0


def log_stats(executor: Any) -> dict[str, int]:
    """The restart log's size now: calls and bytes (all workers)."""
    if hasattr(executor, "replay_stats"):
        st = executor.replay_stats()
        return {"log_calls": int(st["log_calls"]), "log_bytes": int(st["log_bytes"]),
                "snapshot_bytes": int(st.get("snapshot_bytes", 0))}
    hist = list(getattr(executor, "_history", []))
    return {"log_calls": sum(len(h) for h in hist),
            "log_bytes": sum(_arg_bytes(args) for h in hist for _, args in list(h)), "snapshot_bytes": 0}


_STATE: list[Any] = []


def store_bytes() -> int:
    """Bytes in use in the object store (all nodes; what ``ray memory --stats-only`` prints)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    if not _STATE:
        _STATE.append(get_state_from_address(ray.get_runtime_context().gcs_address))
    return int(get_memory_info_reply(_STATE[0]).store_stats.object_store_bytes_used)


def worker_pids() -> list[int]:
    """The shard actors of this driver's Ray (children of its raylet; other Rays may run here)."""
    import ray

    node = ray._private.worker._global_node
    pids = []
    for raylet in node.all_processes.get("raylet", []) if node is not None else []:
        out = subprocess.run(["pgrep", "-P", str(raylet.process.pid), "-f", "ray::ShardWorker"], capture_output=True,
                             text=True).stdout.split()
        pids += [int(p) for p in out]
    return pids


def proc_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


class Sampler(threading.Thread):
    def __init__(self, executor: Any, every: float) -> None:
        super().__init__(daemon=True)
        self.executor, self.every = executor, every
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def sample(self) -> dict[str, Any]:
        s = {"t": time.monotonic(), "driver_rss": status_bytes("VmRSS:"), "store_used": store_bytes(),
             "workers_rss": sum(proc_rss(p) for p in worker_pids())}
        s.update(log_stats(self.executor))
        return s

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append(self.sample())
            except Exception:  # the job is ending (actors closing)
                pass
            self.stop.wait(self.every)


def run_scenario(name: str, pool: Path, labeled: Path | None, strategy: str, budget: int, shards: int,
                 every: float) -> dict[str, Any]:
    import ray

    from alscale.jobspec import validate_job
    from alscale.runtime.coordinator import run_job
    from alscale.runtime.ray_executor import RayExecutor

    raw: dict[str, Any] = {"pool": {"path": str(pool)}, "strategy": {"name": strategy, "budget": budget},
                           "runtime": {"executor": "ray", "shards": shards}, "seed": 0}
    if labeled is not None:
        raw["labeled"] = {"path": str(labeled)}
    job = validate_job(raw)
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")  # never a `ray start` cluster here
    executor = RayExecutor(shards)
    # Ray puts the driver's working directory first on the workers' sys.path: run an older
    # commit from its own worktree (cwd), or its workers import the current alscale.
    here = __import__("alscale").__file__
    there = ray.get(executor.actors[0].__ray_call__.remote(lambda self: __import__("alscale").__file__))
    if here != there:
        raise SystemExit(f"the driver runs {here} but the workers {there}: run from the measured worktree")
    base_rss = status_bytes("VmRSS:")
    load_start = os.getloadavg()
    sampler = Sampler(executor, every)
    first = sampler.sample()
    sampler.start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="alscale-replay-") as out:
        result = run_job(job, out_dir=Path(out) / "out", executor=executor, progress=False)
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    end = sampler.sample()
    # Recovery of a worker killed at the end of the selection.
    pid = ray.get(executor.actors[0].__ray_call__.remote(lambda self: os.getpid()))
    before = dict(executor.replay_stats()) if hasattr(executor, "replay_stats") else {}
    log_at_kill = log_stats(executor)
    os.kill(pid, signal.SIGKILL)
    t1 = time.perf_counter()
    recovery_error = None
    try:
        executor.map("n_candidates", [()] * shards)
    except Exception as exc:  # noqa: BLE001 -- older code could fail here: record it, keep the job's numbers
        recovery_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    recovery_s = time.perf_counter() - t1
    after = dict(executor.replay_stats()) if hasattr(executor, "replay_stats") else {}
    replayed = (after.get("replayed_calls", 0) - before.get("replayed_calls", 0)) if after else \
        len(executor._history[0])
    samples = sampler.samples + [end]
    try:
        executor.close()
    except Exception:  # noqa: BLE001 -- after a failed recovery
        pass
    ray.shutdown()
    _STATE.clear()
    return {
        "scenario": name, "strategy": strategy, "budget": budget, "rows": result.manifest["pool"]["n_rows"],
        "shards": shards, "seconds": round(seconds, 2), "select_s": result.manifest["phase_seconds"].get("select"),
        "round_trips": result.manifest["round_trips"],
        "driver_rss_start": first["driver_rss"], "driver_rss_after_executor": base_rss,
        "driver_rss_peak": max(s["driver_rss"] for s in samples), "driver_rss_end": end["driver_rss"],
        "store_used_start": first["store_used"], "store_used_peak": max(s["store_used"] for s in samples),
        "store_used_end": end["store_used"], "workers_rss_peak": max(s["workers_rss"] for s in samples),
        "log_calls_peak": max(s["log_calls"] for s in samples), "log_bytes_peak": max(s["log_bytes"] for s in samples),
        "snapshot_bytes_peak": max(s["snapshot_bytes"] for s in samples),
        "log_at_kill": log_at_kill, "recovery_s": round(recovery_s, 2), "replayed_calls": int(replayed),
        "recovery_error": recovery_error,
        "replay_stats": after, "n_samples": len(samples), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "alscale_from": __import__("alscale").__file__,
        "restarts_during_job": before.get("restarts"),  # None: code without replay_stats
    }


def git_revision() -> str:
    """The revision of the alscale measured (its checkout, not necessarily this script's)."""
    import alscale

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(alscale.__file__).resolve().parents[1],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", default="run")
    ap.add_argument("--kcenter-rows", type=int, default=1_000_000)
    ap.add_argument("--kcenter-budget", type=int, default=10_000)
    ap.add_argument("--batchbald-rows", type=int, default=1_000_000)
    ap.add_argument("--batchbald-budget", type=int, default=100)
    ap.add_argument("--batchbald-strategy", default="batchbald", choices=("batchbald", "batchbald_prefilter"),
                    help="the exact greedy, or BatchBALD on the top rows by BALD (approximate)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    ap.add_argument("--only", nargs="*", default=["kcenter", "batchbald"])
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    rows = []
    if "kcenter" in args.only:
        pool = ensure_pool(args.kcenter_rows, 1, 32)
        rows.append(run_scenario("kcenter", pool, ensure_labeled(args.kcenter_rows, 200), "kcenter",
                                 args.kcenter_budget, args.shards, args.every))
    if "batchbald" in args.only:
        pool = ensure_pool(args.batchbald_rows, 20, 0)
        rows.append(run_scenario(args.batchbald_strategy, pool, None, args.batchbald_strategy, args.batchbald_budget,
                                 args.shards, args.every))
    mib = 1 << 20
    cols = ["scenario", "rows", "budget", "seconds", "round_trips", "driver_rss_peak", "store_used_peak",
            "log_calls_peak", "log_bytes_peak", "snapshot_bytes_peak", "recovery_s", "replayed_calls"]
    print(" | ".join(cols))
    for r in rows:
        cells = [f"{r[c] / mib:.1f} MiB" if c.endswith(("_peak", "_end")) and "calls" not in c else str(r[c])
                 for c in cols]
        print(" | ".join(cells))
    record = {"label": args.label, "git_revision": git_revision(), "machine": platform.node(),
              "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "args": vars(args), "runs": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"replay_memory-{args.label}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
