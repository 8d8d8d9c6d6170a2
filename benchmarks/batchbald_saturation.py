"""Why greedy BatchBALD with a long batch is slow, and what the float64 stage saves (issue 15.4).

Greedy BatchBALD's joint mutual information cannot exceed ``H(ω) = log K`` (K posterior
samples). Once a batch gets near that ceiling, every candidate's gain shrinks towards 0,
the float32 fast path (error bound ~2e-5 nats at K = 20, C = 10) can no longer tell the rows
apart, and the exact loop had to evaluate the float64 reference kernel on *every* row at
every step. The float64 stage (``batchbald._refine_float64``, error bound ~1e-12) separates
them again until the gains reach float64 noise too.

This benchmark, on the pool of ``benchmarks/replay_memory.py`` (synthetic, K = 20, C = 10,
M = 1,000, one in-process shard, seed 0):

1. runs the greedy for ``--budget`` picks with the float64 stage and records each step's
   seconds and work: rows past the bound, rows scored in float32, rows the reference kernel
   evaluated, and the batch's joint MI against ``log K``;
2. rebuilds the state after ``--at`` picks (e.g. before, in and after the float32-saturated
   range) and times one step with the float64 stage on and off, alternating in this process,
   ``--repeats`` times each (same picks asserted);
3. extrapolates the full greedy's time without the stage from (1) and (2).

    .venv/bin/python benchmarks/batchbald_saturation.py [--rows 20000] [--budget 100] [--at 20 50 70 90]

Prints a table and writes ``benchmarks/results/batchbald_saturation-<rows>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from replay_memory import ensure_pool  # noqa: E402


def load(rows: int) -> tuple[np.ndarray, np.ndarray]:
    from alscale.pool import open_pool, read_shard
    from alscale.types import ShardSpec

    info = open_pool(str(ensure_pool(rows, 20, 0)))
    d = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["log_probs"])
    return d.row_ids_N, np.asarray(d.log_probs_N_K_C)


def full_run(row_ids: np.ndarray, lp: np.ndarray, budget: int, options: dict) -> dict[str, Any]:
    from alscale.strategies import FanoutShards, InProcessFanout, ShardState
    from alscale.strategies.batchbald import batchbald_loop

    t0 = time.perf_counter()
    sel, stats = batchbald_loop(FanoutShards(InProcessFanout([ShardState(row_ids, lp)])), budget, options=options,
                                seed=0)
    return {"seconds": time.perf_counter() - t0, "picks": sel.indices.tolist(), "scores": sel.scores.tolist(),
            "steps": stats.steps}


def one_step(row_ids: np.ndarray, lp: np.ndarray, picks: list[int], options: dict, refine: bool) -> dict[str, Any]:
    """Time step ``len(picks)`` of the greedy (the batch ``picks`` as its state), as the loop runs it."""
    from alscale.strategies import FanoutShards, InProcessFanout, ShardState, batchbald
    from alscale.strategies.joint_entropy import BatchJoint, group_configs, grouped_state

    k, c = lp.shape[1:]
    joint = BatchJoint.empty(k, c, max_configs=options["max_configs"], num_samples=options["num_samples"], seed=0)
    for r in picks:
        joint.extend(lp[r])
    shards = FanoutShards(InProcessFanout([ShardState(row_ids, lp)]))
    shards.exclude(np.asarray(picks, dtype=np.int64))
    shards.call(batchbald._SETUP, options["device"], options["chunk_rows"], options["prune"])
    n_groups = min(joint.n_configs // batchbald._GROUP_RATIO, batchbald._MAX_GROUPS)
    grouped = (None, None)
    if batchbald._use_groups(joint.n_configs, k, c, n_groups, lp.shape[0]):
        grouped = grouped_state(joint.post_M_K, joint.weights_M, group_configs(joint.post_M_K, joint.weights_M,
                                                                                 n_groups))
    saved = batchbald._REFINE_MIN_ROWS
    batchbald._REFINE_MIN_ROWS = saved if refine else 10**12
    try:
        t0 = time.perf_counter()
        (offer,) = shards.call(batchbald._STEP, joint.post_M_K, joint.weights_M, *grouped, None, True)
        seconds = time.perf_counter() - t0
    finally:
        batchbald._REFINE_MIN_ROWS = saved
    return {"seconds": seconds, "row_id": offer.row_id, "gain": offer.gain, "scored": offer.n_scored,
            "reference": offer.n_reference}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--at", type=int, nargs="*", default=[20, 50, 70, 90])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    from alscale.strategies import registry

    options = registry.check_options("batchbald", {"device": "cpu"})
    row_ids, lp = load(args.rows)
    k = lp.shape[1]
    run = full_run(row_ids, lp, args.budget, options)
    picks = run["picks"]
    ab = []
    for n in [a for a in args.at if a < len(picks)]:
        on, off = [], []
        for _ in range(args.repeats):  # alternate, so load drifts hit both
            on.append(one_step(row_ids, lp, picks[:n], options, True))
            off.append(one_step(row_ids, lp, picks[:n], options, False))
        assert {s["row_id"] for s in on + off} == {picks[n]}, (n, on, off)
        assert len({s["gain"] for s in on + off}) == 1
        ab.append({"picks": n, "joint_mi": run["scores"][n - 1], "with_s": statistics.median(s["seconds"] for s in on),
                   "without_s": statistics.median(s["seconds"] for s in off), "scored": on[0]["scored"],
                   "reference_with": on[0]["reference"], "reference_without": off[0]["reference"]})
    # Without the stage, a step's reference work is every row the float32 path could not separate.
    per_ref_s = [(a["without_s"] - a["with_s"]) / max(1, a["reference_without"] - a["reference_with"])
                 for a in ab if a["reference_without"] > a["reference_with"]]
    ref_s = statistics.median(per_ref_s) if per_ref_s else 0.0
    estimate = run["seconds"] + sum(max(0, s["scored"] - s["reference"]) * ref_s for s in run["steps"]
                                    if s["scored"] >= args.rows // 2)
    load_avg = os.getloadavg()
    print(f"greedy b={args.budget} over {args.rows:,} rows (K={k}, C={lp.shape[2]}, M={options['num_samples']}), "
          f"load {load_avg[0]:.1f}: {run['seconds']:.1f} s with the float64 stage; about {estimate:.0f} s without "
          f"(from {ref_s * 1e6:.0f} us per reference row)")
    print(f"step | joint MI (log K = {math.log(k):.3f}) | with s | without s | rows scored | reference with | without")
    for a in ab:
        print(f"{a['picks']} | {a['joint_mi']:.4f} | {a['with_s']:.2f} | {a['without_s']:.2f} | {a['scored']} | "
              f"{a['reference_with']} | {a['reference_without']}")
    print("phases (steps): ", phase_summary(run["steps"], args.rows))
    record = {"rows": args.rows, "budget": args.budget, "k": int(k), "c": int(lp.shape[2]),
              "num_samples": options["num_samples"], "loadavg": load_avg, "machine": platform.node(),
              "cpus": os.cpu_count(), "greedy_seconds": run["seconds"], "estimate_without_s": estimate,
              "reference_row_s": ref_s, "ab": ab, "steps": run["steps"], "scores": run["scores"],
              "picks": picks}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"batchbald_saturation-{args.rows}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


def phase_summary(steps: list[dict], rows: int) -> dict[str, Any]:
    """Steps (and their seconds) by what limited them: pruning worked; every row scored in
    float32 but few needed the reference; every row needed the reference."""
    out: dict[str, list[float]] = {"pruned": [], "float32-saturated": [], "float64-saturated": []}
    for s in steps:
        key = ("pruned" if s["scored"] < rows // 2 else
               "float64-saturated" if s["reference"] >= s["scored"] // 2 else "float32-saturated")
        out[key].append(s["seconds"])
    return {k: {"steps": len(v), "seconds": round(sum(v), 1)} for k, v in out.items()}


if __name__ == "__main__":
    raise SystemExit(main())
