"""Throughput of one acquisition job end to end: local vs Ray, 100k and 1M rows.

Scenarios (each a real job through ``run_job``, pool on disk, exact global top-k):

- ``precomputed``: pool with a ``log_probs`` column (C = 10, one pass), ``entropy``,
  budget 1,000 — the goal is >= 500k rows/s end to end excluding Ray start-up, and Ray
  within 1.3x of local wall time.
- ``model``: the demo job — 64-d features scored by the built-in MLP, then ``entropy``.

A single-process numpy baseline (read the whole column, entropy, argsort) runs on the same
pool in the same invocation. Results: one JSON line per run in
``benchmarks/results/throughput.jsonl`` and a printed table (medians over repeats).

    python benchmarks/throughput.py [--rows 100000 1000000] [--repeats 3] [--scenarios precomputed model]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from alscale.jobspec import validate_job  # noqa: E402
from alscale.pool import open_pool, synth_pool  # noqa: E402
from alscale.runtime import output  # noqa: E402
from alscale.runtime.coordinator import run_job  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def pool_for(scenario: str, rows: int) -> Path:
    """Generate (once) and cache the scenario's pool."""
    DATA.mkdir(parents=True, exist_ok=True)
    if scenario == "precomputed":
        path = DATA / f"logprobs-{rows}.arrow"
        if not path.exists():
            synth_pool(str(path), rows=rows, dim=8, classes=10, seed=0, log_probs_samples=1)
    else:
        path = DATA / f"features-{rows}.arrow"
        if not path.exists():
            synth_pool(str(path), rows=rows, dim=64, classes=10, seed=0)
    return path


def job_for(scenario: str, pool: Path, executor: str, shards: int):
    raw = {
        "pool": {"path": str(pool)},
        "strategy": {"name": "entropy", "budget": 1000},
        "runtime": {"executor": executor, "shards": shards},
        "seed": 0,
    }
    if scenario == "model":
        raw["model"] = {"factory": "mlp", "kwargs": {"num_classes": 10, "hidden": 128}, "batch_size": 8192}
    return validate_job(raw, source=f"bench:{scenario}")


def numpy_baseline(pool: Path) -> dict:
    """One process, no alscale: read the log_probs column, entropy, top-1000 by argsort."""
    import pyarrow as pa

    t0 = time.perf_counter()
    with pa.memory_map(str(pool)) as src:
        table = pa.ipc.open_file(src).read_all()
        col = table.column("log_probs").combine_chunks()
        lp = col.flatten().to_numpy().reshape(len(col), -1)
        ids = table.column("row_id").to_numpy()
        t1 = time.perf_counter()
        p = np.exp(lp)
        ent = -(p * lp).sum(1)
        top = ids[np.argsort(-ent, kind="stable")[:1000]]
        t2 = time.perf_counter()
    del top
    return {"read": t1 - t0, "select": t2 - t1}


def run_once(scenario: str, rows: int, executor: str, shards: int) -> dict:
    pool = pool_for(scenario, rows)
    if executor == "numpy":
        phases = numpy_baseline(pool)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_job(job_for(scenario, pool, executor, shards), out_dir=tmp, progress=False)
        phases = result.manifest["phase_seconds"]
    work = sum(v for k, v in phases.items() if k != "startup")
    return {
        "benchmark": "throughput",
        "scenario": scenario,
        "rows": rows,
        "executor": executor,
        "shards": shards if executor != "numpy" else 1,
        "phase_seconds": phases,
        "seconds_excl_startup": work,
        "rows_per_s": rows / work,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "git_revision": output.git_revision(),
        "machine": output.machine(),
        "versions": output.versions(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--scenarios", nargs="+", default=["precomputed", "model"], choices=["precomputed", "model"])
    ap.add_argument("--out", type=Path, default=RESULTS / "throughput.jsonl")
    args = ap.parse_args(argv)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for scenario in args.scenarios:
        for rows in args.rows:
            open_pool(str(pool_for(scenario, rows)))  # generate + warm the page cache outside the timings
            executors = ["local", "ray"] + (["numpy"] if scenario == "precomputed" else [])
            run_once(scenario, rows, "local", args.shards)  # warm-up (imports, page cache)
            for rep in range(args.repeats):
                for ex in executors:  # interleaved, so machine noise hits every executor alike
                    rec = run_once(scenario, rows, ex, args.shards)
                    rec["repeat"] = rep
                    records.append(rec)
                    with args.out.open("a") as fh:
                        fh.write(json.dumps(rec) + "\n")
    print_table(records)
    return 0


def print_table(records: list[dict]) -> None:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["scenario"], r["rows"], r["executor"]), []).append(r)
    head = f"{'scenario':12s} {'rows':>9s} {'executor':8s} {'read':>7s} {'score':>7s} {'select':>7s} {'write':>7s} " \
           f"{'total*':>7s} {'rows/s':>11s} {'vs local':>8s} {'startup':>8s}"
    print(head)
    print("-" * len(head))
    for (scenario, rows, ex), rs in groups.items():
        med = {k: statistics.median(r["phase_seconds"].get(k, 0.0) for r in rs)
               for k in ("read", "score", "select", "write", "startup")}
        total = statistics.median(r["seconds_excl_startup"] for r in rs)
        local = groups.get((scenario, rows, "local"))
        ratio = total / statistics.median(r["seconds_excl_startup"] for r in local) if local else float("nan")
        print(f"{scenario:12s} {rows:>9,d} {ex:8s} {med['read']:7.3f} {med['score']:7.3f} {med['select']:7.3f} "
              f"{med['write']:7.3f} {total:7.3f} {rows / total:11,.0f} {ratio:8.2f} {med['startup']:8.2f}")
    print("* total = every phase but start-up (Ray init + actors); medians over repeats")


if __name__ == "__main__":
    sys.exit(main())
