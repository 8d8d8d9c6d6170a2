"""The shard seam's overhead: selection CPU time and picks of this tree against another one.

Runs the selection loops in memory (2 shards, ``InProcessFanout``) on one synthetic pool —
100,000 rows, 16-D clustered embeddings, K = 1 log-probs over 10 classes (BatchBALD: 10,000
rows, K = 20) — once with this tree's ``alscale`` and once with ``--base``'s, alternately,
each in its own process with single-threaded BLAS, and reports per case the least process
CPU time over the repeats and passes (the load of a shared machine inflates wall time far
more than CPU time) and whether both trees picked the same rows with the same scores
(a hash of ``indices_B`` and ``scores_B``)::

    git archive main | tar -x -C /tmp/alscale-main
    .venv/bin/python benchmarks/seam_overhead.py --base /tmp/alscale-main [--repeats 3] [--passes 2] [case ...]

Writes ``benchmarks/results/seam_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cases() -> dict:
    import numpy as np

    from alscale.strategies import FanoutShards, InProcessFanout, ShardState, run_strategy
    from alscale.strategies.quotas import select_with_quotas
    from alscale.strategies.seals import apply_seals

    rng = np.random.default_rng(0)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    n = 100_000
    centers = rng.normal(size=(20, 16)) * 4
    emb = (centers[rng.integers(0, 20, n)] + rng.normal(size=(n, 16))).astype(np.float32)
    lp1 = log_softmax(rng.normal(size=(n, 1, 10)) * 2).astype(np.float32)
    lpk = log_softmax(rng.normal(size=(10_000, 20, 10)) * 2).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    labeled = ids[::997]

    def shards(rows, lp, with_emb=True):
        b = np.linspace(0, rows, 3).astype(int)
        st = [ShardState(ids[x:y], lp[x:y], emb[x:y] if with_emb else None) for x, y in zip(b[:-1], b[1:])]
        sh = FanoutShards(InProcessFanout(st))
        sh.exclude(labeled[labeled < rows])
        return sh

    def seals_entropy():
        sh = shards(n, lp1)
        sh.exclude(ids[::200])
        apply_seals(sh, 10)
        return run_strategy(sh, "entropy", 1000, seed=1)

    def quotas(name, budget, q):
        return lambda: select_with_quotas(shards(n, lp1), name, budget, q, seed=1).selection

    return {
        "entropy": lambda: run_strategy(shards(n, lp1), "entropy", 1000, seed=1),
        "softrank": lambda: run_strategy(shards(n, lp1), "softrank", 1000, seed=1),
        "kcenter": lambda: run_strategy(shards(n, lp1), "kcenter", 1000, options={"backend": "numpy"}),
        "badge": lambda: run_strategy(shards(n, lp1), "badge", 1000, seed=1),
        "kmeans_parallel": lambda: run_strategy(shards(n, lp1), "kmeans_parallel", 1000, seed=1),
        "batchbald": lambda: run_strategy(shards(10_000, lpk, False), "batchbald", 10, seed=1),
        "batchbald_prefilter": lambda: run_strategy(shards(10_000, lpk, False), "batchbald_prefilter", 10, seed=1,
                                                    options={"prefilter": 2000}),
        "base_balanced": lambda: run_strategy(shards(n, lp1), "base_balanced", 1000, seed=1),
        "quotas_entropy": quotas("entropy", 1000, {"min": 50, "max": 80}),
        "quotas_kcenter": quotas("kcenter", 100, {"max": 12}),
        "quotas_badge": quotas("badge", 500, {"max": 60}),
        "seals_entropy": seals_entropy,
    }


def _measure(names: list[str], repeats: int) -> None:
    """Child process: one JSON line per case (least CPU and wall seconds, hash of the picks)."""
    import numpy as np

    cases = _cases()
    for name in names or list(cases):
        cpu = wall = float("inf")
        sel = None
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            sel = cases[name]()
            wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
        digest = hashlib.sha256(np.asarray(sel.indices_B, np.int64).tobytes()
                                + np.asarray(sel.scores_B, np.float64).tobytes()).hexdigest()[:16]
        print(json.dumps({"case": name, "cpu_s": cpu, "wall_s": wall, "hash": digest}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the other tree (e.g. main, from git archive)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--passes", type=int, default=2, help="alternate base/this tree this many times")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("cases", nargs="*")
    args = ap.parse_args()
    if args.child:
        _measure(args.cases, args.repeats)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    runs: dict[str, dict[str, list[dict]]] = {}
    loads = []
    for _ in range(args.passes):
        for tree, root in (("base", Path(args.base).resolve()), ("this", ROOT)):
            loads.append(os.getloadavg()[0])
            out = subprocess.run([sys.executable, __file__, "--child", "--base", str(root), "--repeats",
                                  str(args.repeats), *args.cases], env={**env, "PYTHONPATH": str(root)},
                                 cwd=str(root), capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                rec = json.loads(line)
                runs.setdefault(rec["case"], {}).setdefault(tree, []).append(rec)
    rows = []
    print(f"{'case':22s} {'base cpu s':>10s} {'this cpu s':>10s} {'ratio':>6s}  same picks")
    for case, by in runs.items():
        b, t = min(r["cpu_s"] for r in by["base"]), min(r["cpu_s"] for r in by["this"])
        same = len({r["hash"] for rs in by.values() for r in rs}) == 1
        rows.append({"case": case, "base_cpu_s": b, "this_cpu_s": t, "ratio": t / b, "same_picks": same})
        print(f"{case:22s} {b:10.4f} {t:10.4f} {t / b:6.2f}  {same}")
    print(f"1-minute load average during the passes: {min(loads):.1f}-{max(loads):.1f}")
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "seam_overhead.json").write_text(json.dumps({"base": args.base, "load": loads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
