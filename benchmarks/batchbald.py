"""BatchBALD: alscale vs batchbald_redux, baal and scikit-activeml, side by side in one run.

Scenarios (synthetic log-probs, the same ``.npy`` input and the same M for every method):

- ``small``: U = 2,000, K = 20, C = 10, b = 10, M = 1,000 (REFERENCES §3: batchbald_redux
  2.0.5 took 5.73 s on this machine type). Goal: >= 20x faster than batchbald_redux, with the
  same first 4 picks (joint entropy exact there: 10^3 <= M) — alscale with pruning on and off,
  the three peers.
- ``mnist``: U = 60,000, K = 100, C = 10, b = 10, M = 1,000 (MNIST-shaped). Goal: <= 15 s per
  acquisition over the full pool. alscale pruned (default) and unpruned (``prune: false``:
  every row scored at every step, the full GEMM arithmetic), as in-process calls and as jobs
  (pool on disk, 1 local shard vs 2 Ray actors: the ``select`` phase); the BALD-prefilter mode
  at several P with its loss of joint MI; with ``--mnist-peers NAME ...`` those peers too (slow).
- ``mnist_m10k``: as ``mnist`` with M = 10,000 (the reference's example setting; the paper's
  GPU runs took 85 s per acquisition, REFERENCES §2).

Each method runs in a fresh subprocess (this file in ``--worker`` mode): alscale with this
interpreter, peers with ``.venv-peers/bin/python``, under a timeout and an address-space cap;
peak memory is the child's max RSS (``rss_mb``), ``rss_input_mb`` its RSS after imports and
loading the input. Times are the selection call only (median of ``--repeats`` in-process
calls). Quality: every method's batch gets the same joint-MI estimate (100,000 configurations
sampled with a fixed seed, minus the conditional entropies).

Synthetic inputs: per row a base logit vector with one class boosted by U(0, 8) (confidence)
plus per-sample Gaussian noise of row-specific scale U(0, 1.5) (disagreement between the K
samples), log-softmax, float32 — BALD spread from ~0 to ~0.7 nats like an early-round model.

Results: one JSON line per run in ``benchmarks/results/batchbald.jsonl`` and a printed table.
This machine (2 cores) is shared with other benchmarks; medians of repeats, and the load
average is recorded with each run.

    python benchmarks/batchbald.py [--scenarios small mnist mnist_m10k] [--repeats 3] [--rounds 3] \\
        [--mnist-peers batchbald_redux]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "results"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
EVAL_SAMPLES = 100_000
EVAL_SEED = 12345
MEM_CAP_BYTES = 14 << 30

SCENARIOS: dict[str, dict[str, int]] = {
    "small": {"rows": 2000, "k": 20, "c": 10, "budget": 10, "samples": 1000},
    "mnist": {"rows": 60000, "k": 100, "c": 10, "budget": 10, "samples": 1000},
    "mnist_m10k": {"rows": 60000, "k": 100, "c": 10, "budget": 10, "samples": 10000},
}


def synthetic_log_probs(rows: int, k: int, c: int, seed: int = 0) -> np.ndarray:
    """float32 ``[rows, k, c]`` log-probs (see the module docstring)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(rows, 1, c)).astype(np.float32)
    base[np.arange(rows), 0, rng.integers(0, c, size=rows)] += rng.uniform(0, 8, size=rows).astype(np.float32)
    x = base + rng.uniform(0, 1.5, size=(rows, 1, 1)).astype(np.float32) * rng.normal(size=(rows, k, c)).astype(
        np.float32
    )
    x -= x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def input_for(name: str) -> Path:
    s = SCENARIOS[name]
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"batchbald-{s['rows']}x{s['k']}x{s['c']}.npy"
    if not path.exists():
        np.save(path, synthetic_log_probs(s["rows"], s["k"], s["c"]))
    return path


# --------------------------------------------------------------------------------------
# Workers (run in a subprocess; only numpy and the library under test are imported)
# --------------------------------------------------------------------------------------


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed(fn, repeats: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def worker_alscale(lp: np.ndarray, args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    from alscale.strategies import FanoutShards, InProcessFanout, ShardState, registry
    from alscale.strategies.batchbald import batchbald_loop, prefilter_loop

    name = "batchbald_prefilter" if args.prefilter else "batchbald"
    opts = {"num_samples": args.samples, "prune": not args.no_prune}
    if args.prefilter:
        opts["prefilter"] = args.prefilter
    opts = registry.check_options(name, opts)
    loop = prefilter_loop if args.prefilter else batchbald_loop
    ids = np.arange(lp.shape[0], dtype=np.int64)
    n = lp.shape[0]
    bounds = np.linspace(0, n, args.shards + 1).astype(int)

    def run():
        states = [ShardState(ids[a:b], lp[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return loop(FanoutShards(InProcessFanout(states)), args.budget, options=opts, seed=0)

    rss_input = _rss_mb()
    times, (sel, stats) = _timed(run, args.repeats)
    return {
        "times": times,
        "picks": sel.indices.tolist(),
        "scores": sel.scores.tolist(),
        "round_trips": stats.round_trips,
        "steps": stats.steps,
        "rss_input_mb": rss_input,
    }


def worker_alscale_job(lp: np.ndarray, args: argparse.Namespace) -> dict:
    """The same selection as a job: pool on disk (log_probs column), local or Ray shards."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import tempfile

    from alscale.jobspec import validate_job
    from alscale.runtime.coordinator import run_job

    executor, _, shards = args.job.partition(":")
    rss_input = _rss_mb()
    times, picks, trips = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            job = validate_job(
                {
                    "pool": {"path": args.pool},
                    "strategy": {"name": "batchbald", "budget": args.budget, "options": {"num_samples": args.samples}},
                    "runtime": {"executor": executor, "shards": int(shards)},
                    "seed": 0,
                }
            )
            result = run_job(job, out_dir=Path(tmp) / f"r{r}", progress=False)
            times.append(result.manifest["phase_seconds"]["select"])
            picks = result.selection.indices_B.tolist()
            trips = result.manifest["round_trips"]
    return {"times": times, "picks": picks, "round_trips": trips, "rss_input_mb": rss_input}


def worker_redux(lp: np.ndarray, args: argparse.Namespace) -> dict:
    import torch
    from batchbald_redux.batchbald import get_batchbald_batch

    x = torch.from_numpy(lp)
    rss_input = _rss_mb()
    times, out = _timed(lambda: get_batchbald_batch(x, args.budget, args.samples), args.repeats)
    return {"times": times, "picks": list(out.indices), "scores": list(out.scores), "rss_input_mb": rss_input}


def worker_baal(lp: np.ndarray, args: argparse.Namespace) -> dict:
    from baal.active.heuristics import BatchBALD

    k = lp.shape[1]
    probs = np.exp(lp.astype(np.float64)).transpose(0, 2, 1).copy()  # [N, C, K]
    h = BatchBALD(num_samples=args.budget, num_draw=max(1, args.samples // k))  # M = K * num_draw
    rss_input = _rss_mb()
    times, unc = _timed(lambda: h.compute_score(probs), args.repeats)
    order = np.argsort(-np.asarray(unc), kind="stable")[: args.budget]  # baal returns scores, not an order
    return {"times": times, "picks": order.tolist(), "ordered": False, "rss_input_mb": rss_input}


def worker_skactiveml(lp: np.ndarray, args: argparse.Namespace) -> dict:
    from skactiveml.pool import batch_bald

    probas = np.exp(lp.astype(np.float64)).transpose(1, 0, 2).copy()  # [K, N, C]
    rss_input = _rss_mb()
    times, util = _timed(
        lambda: batch_bald(probas.copy(), args.budget, n_MC_samples=args.samples, random_state=0), args.repeats
    )
    picks = [int(np.nanargmax(row)) for row in util]
    return {"times": times, "picks": picks, "rss_input_mb": rss_input}


WORKERS = {
    "alscale": worker_alscale,
    "alscale_job": worker_alscale_job,
    "batchbald_redux": worker_redux,
    "baal": worker_baal,
    "scikit_activeml": worker_skactiveml,
}


def run_worker(args: argparse.Namespace) -> int:
    lp = np.load(args.input) if args.input else None
    out = WORKERS[args.worker](lp, args)
    out["rss_mb"] = _rss_mb()
    Path(args.out).write_text(json.dumps(out))
    return 0


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_CAP_BYTES, MEM_CAP_BYTES))


ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def spawn(worker: str, python: Path | str, inp: Path | None, s: dict, *, repeats: int, timeout: float,
          extra: list[str] | None = None, cap: bool = True, env: dict[str, str] | None = None) -> dict:
    out = DATA / f"_result-{os.getpid()}.json"
    out.unlink(missing_ok=True)
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", worker, "--out", str(out),
           "--budget", str(s["budget"]), "--samples", str(s["samples"]), "--repeats", str(repeats)]
    if inp is not None:
        cmd += ["--input", str(inp)]
    cmd += extra or []
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_cap_memory if cap else None, cwd=ROOT, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)[-300:]}"}
    res = json.loads(out.read_text())
    out.unlink()
    res["process_seconds"] = time.perf_counter() - t0
    return res


def joint_mi(lp: np.ndarray, picks: list[int]) -> float:
    """The common quality estimate: joint MI of the batch (EVAL_SAMPLES configurations)."""
    sys.path.insert(0, str(ROOT))
    from alscale.strategies import joint_entropy as je

    rows = lp[np.asarray(picks, dtype=np.int64)]
    h = je.joint_entropy(rows, num_samples=EVAL_SAMPLES, max_configs=EVAL_SAMPLES, seed=EVAL_SEED)
    return h - sum(je.row_expected_entropy(r) for r in rows)


def _machine() -> dict:
    return {"hostname": platform.node(), "cpus": os.cpu_count(), "processor": platform.processor(),
            "python": platform.python_version()}


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10)
        return rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _pool_for(inp: Path) -> Path:
    """Arrow pool with a log_probs column (for the job runs), made once per input."""
    path = inp.with_suffix(".arrow")
    if not path.exists():
        sys.path.insert(0, str(ROOT))
        from alscale.pool import pool_table, write_table

        lp = np.load(inp)
        write_table(pool_table(np.arange(lp.shape[0], dtype=np.int64), log_probs_N_K_C=lp), str(path))
    return path


def plan(name: str, s: dict, args: argparse.Namespace) -> list[tuple[str, str, Path | str, list[str], int, float]]:
    """(label, worker, python, extra args, repeats, timeout) per run of a scenario."""
    r = args.repeats
    runs: list[tuple[str, str, Path | str, list[str], int, float]] = [
        ("alscale", "alscale", sys.executable, [], r, 900),
        ("alscale unpruned", "alscale", sys.executable, ["--no-prune"], max(1, r - 1) if name != "small" else r, 900),
    ]
    peers = [("batchbald_redux", "batchbald_redux"), ("baal", "baal"), ("scikit_activeml", "scikit_activeml")]
    if name == "small":
        runs += [("alscale 2 shards", "alscale", sys.executable, ["--shards", "2"], r, 300)]
        runs += [(label, w, PEERS_PYTHON, [], r, 300) for label, w in peers]
        # One thread: the peers' many small ops stall less on a shared machine (their best case here).
        runs += [(f"{label} 1 thread", w, PEERS_PYTHON, [], r, 300) for label, w in peers]
    if name == "mnist":
        if "ray" not in args.skip:
            runs += [("alscale job local 1 shard", "alscale_job", sys.executable, ["--job", "local:1"], 1, 900),
                     ("alscale job ray 2 shards", "alscale_job", sys.executable, ["--job", "ray:2"], 1, 900)]
        runs += [(f"alscale prefilter P={p}", "alscale", sys.executable, ["--prefilter", str(p)], r, 600)
                 for p in args.prefilters]
        runs += [(label, w, PEERS_PYTHON, [], 1, 1800) for label, w in peers if label in args.mnist_peers]
    if name == "mnist_m10k":
        runs = [runs[0]]
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", nargs="+", default=["small", "mnist", "mnist_m10k"], choices=sorted(SCENARIOS))
    p.add_argument("--repeats", type=int, default=3, help="in-process calls per run (median)")
    p.add_argument("--rounds", type=int, default=1, help="runs of the whole plan, interleaved (median of medians)")
    p.add_argument("--mnist-peers", nargs="*", default=[], help="peers to run on the 60,000-row pool too (slow), "
                   "e.g. batchbald_redux")
    p.add_argument("--prefilters", type=int, nargs="*", default=[1000, 2000, 5000, 10000])
    p.add_argument("--skip", nargs="*", default=[], help="labels to skip (substring match), e.g. ray unpruned")
    # worker mode
    p.add_argument("--worker", choices=sorted(WORKERS))
    p.add_argument("--input")
    p.add_argument("--out")
    p.add_argument("--budget", type=int, default=10)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--no-prune", action="store_true")
    p.add_argument("--prefilter", type=int, default=0)
    p.add_argument("--job", default="")
    p.add_argument("--pool", default="")
    args = p.parse_args(argv)
    if args.worker:
        return run_worker(args)

    RESULTS.mkdir(parents=True, exist_ok=True)
    records = []
    for rnd, name in [(r, n) for n in args.scenarios for r in range(args.rounds)]:
        s = SCENARIOS[name]
        inp = input_for(name)
        lp = np.load(inp)
        for label, worker, python, extra, repeats, timeout in plan(name, s, args):
            if any(sk in label for sk in args.skip):
                continue
            if worker == "alscale_job":
                extra = extra + ["--pool", str(_pool_for(inp))]
            print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
            load0 = os.getloadavg()[0]
            res = spawn(worker, python, None if worker == "alscale_job" else inp, s, repeats=repeats,
                        timeout=timeout, extra=extra, cap=worker != "alscale_job",
                        env=ONE_THREAD if label.endswith("1 thread") else None)
            rec: dict[str, Any] = {"benchmark": "batchbald", "scenario": name, **s, "method": label, "round": rnd,
                                   "load_avg_1m_before": round(load0, 2),
                                   "load_avg_1m_after": round(os.getloadavg()[0], 2)}
            if "error" in res:
                rec["error"] = res["error"]
            else:
                rec["seconds_median"] = statistics.median(res["times"])
                rec["seconds_all"] = [round(t, 4) for t in res["times"]]
                rec["rss_mb"] = round(res["rss_mb"], 1)
                rec["rss_input_mb"] = round(res["rss_input_mb"], 1)
                rec["picks"] = res["picks"]
                rec["ordered_picks"] = res.get("ordered", True)
                rec["round_trips"] = res.get("round_trips")
                if "steps" in res:
                    rec["rows_scored"] = sum(st["scored"] for st in res["steps"])
                    rec["rows_scored_per_step"] = [st["scored"] for st in res["steps"]]
                rec["joint_mi_eval"] = joint_mi(lp, res["picks"])
            rec.update({"git_revision": _git_revision(), "machine": _machine()})
            records.append(rec)
            with open(RESULTS / "batchbald.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            print("   ", {k: rec.get(k) for k in ("seconds_median", "rss_mb", "joint_mi_eval", "error")},
                  file=sys.stderr, flush=True)
    print_table(records)
    return 0


def _merge_rounds(records: list[dict]) -> list[dict]:
    """One row per (scenario, method): the median over rounds of each run's median time."""
    out = []
    for key in dict.fromkeys((r["scenario"], r["method"]) for r in records):
        runs = [r for r in records if (r["scenario"], r["method"]) == key]
        ok = [r for r in runs if "error" not in r]
        if not ok:
            out.append(runs[0])
            continue
        row = dict(ok[0])
        row["seconds_median"] = statistics.median(r["seconds_median"] for r in ok)
        row["seconds_rounds"] = [round(r["seconds_median"], 3) for r in ok]
        row["rss_mb"] = max(r["rss_mb"] for r in ok)
        row["load_avg_1m_before"] = "/".join(str(r["load_avg_1m_before"]) for r in ok)
        out.append(row)
    return out


def print_table(records: list[dict]) -> None:
    records = _merge_rounds(records)
    print(f"\n{'scenario':<11} {'method':<28} {'median s':>9} {'x alscale':>9} {'RSS MB':>8} "
          f"{'joint MI':>9} {'first 4':>8} {'trips':>6} {'rows scored':>12}  rounds (s) / load")
    for name in dict.fromkeys(r["scenario"] for r in records):
        rows = [r for r in records if r["scenario"] == name]
        base = next((r for r in rows if r["method"] == "alscale" and "error" not in r), None)
        redux = next((r for r in rows if r["method"].startswith("batchbald_redux") and "error" not in r), None)
        for r in rows:
            if "error" in r:
                print(f"{name:<11} {r['method']:<28} {r['error']}")
                continue
            ratio = r["seconds_median"] / base["seconds_median"] if base else float("nan")
            ref = redux or base
            same4 = "-"
            if ref is not None and r.get("ordered_picks", True) and ref is not r:
                same4 = "yes" if r["picks"][:4] == ref["picks"][:4] else "no"
            print(f"{name:<11} {r['method']:<28} {r['seconds_median']:>9.3f} {ratio:>9.1f} {r['rss_mb']:>8.0f} "
                  f"{r['joint_mi_eval']:>9.4f} {same4:>8} {str(r.get('round_trips') or '-'):>6} "
                  f"{str(r.get('rows_scored', '-')):>12}  {r.get('seconds_rounds', '')} / {r['load_avg_1m_before']}")
    print("\nmedian s: median over rounds of each run's median over repeats; x alscale: that / alscale's "
          "(pruned, in-process) in the same scenario; first 4: same first four picks as batchbald_redux "
          f"(exact joint entropy there); joint MI: common estimate with {EVAL_SAMPLES:,} sampled "
          "configurations (first round's picks); load: 1-min load average before each run (2 cores).")


if __name__ == "__main__":
    sys.exit(main())
