"""Diversity selection benchmarks: k-center greedy (Core-Set) against peers and a numpy loop.

Scenarios (each a function registered in ``SCENARIOS``; BADGE / k-means++ scenarios live in
``benchmarks/selection_badge.py`` and write to the same results file):

- ``peers``: U = 20,000 unlabelled + L = 500 labelled rows, D = 128, budget B = 100
  (REFERENCES §3 sizes): alscale ``kcenter`` (in-process, one shard) against
  scikit-activeml 1.0.1 ``k_greedy_center``, small-text 1.4.1 ``greedy_coreset`` (euclidean)
  and a plain incremental numpy loop, all on the same ``.npy`` inputs; the peers run from
  ``.venv-peers``. "same picks" compares each batch with alscale's, in order.
- ``million``: N = 1,000,000, D = 128, B = 1,000, nothing labelled (the first pick is the
  row nearest to the mean): alscale exact in-process with 1 and 2 shards (sharded mode) and
  gathered from 2 shards (gather mode), and the incremental numpy loop as the reference.
- ``approx``: the same 1M pool: ``kcenter_approx`` (greedy per shard, then on the union;
  Malkomes et al. 2015) with 2 and 8 shards; the coverage radius (max over rows of the
  distance to the nearest pick) against the exact selection's.

Every run is a fresh subprocess (wall-clock timeout, address-space cap) that loads the
inputs, resets its peak-RSS counter (``/proc/self/clear_refs``) and times the selection
call only. Reported: wall seconds (median over ``--repeats``), peak RSS growth beyond the
inputs, round trips (alscale), and whether the picks equal alscale's. One JSON line per
implementation and scenario goes to ``benchmarks/results/selection.jsonl``.

    python benchmarks/selection.py [--scenarios peers million approx] [--repeats 3] [--skip small_text]

This 2-core machine is shared: each result records the load average; rerun when it is
high (medians over repeats damp, but do not remove, the noise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from peakmem import reset_peak, status_bytes  # sibling module (see peakmem)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "kcenter"
RESULTS = ROOT / "benchmarks" / "results" / "selection.jsonl"
ALSCALE_PYTHON = ROOT / ".venv" / "bin" / "python"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
TIMEOUT_S = 900
AS_LIMIT_BYTES = 24 << 30


# ---------------------------------------------------------------------------------------
# Inputs (deterministic)
# ---------------------------------------------------------------------------------------
def make_embeddings(n: int, d: int, seed: int = 0, blobs: int = 50) -> np.ndarray:
    """``[n, d]`` float32: ``blobs`` Gaussian clusters (centres on a random 16-dim subspace,
    about 4.5 noise-SDs apart) plus unit isotropic noise — like ``alscale pool synth``."""
    rng = np.random.default_rng(seed)
    rank = min(d, 16)
    basis, _ = np.linalg.qr(rng.standard_normal((d, rank)))
    centres = (4.5 / np.sqrt(2 * rank) * rng.standard_normal((blobs, rank)) @ basis.T).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, 1 << 17):
        b = min(n, a + (1 << 17))
        out[a:b] = rng.standard_normal((b - a, d), dtype=np.float32) + centres[rng.integers(0, blobs, b - a)]
    return out


def inputs(name: str, n: int, d: int, n_labeled: int) -> Path:
    """Write (once) ``x.npy`` [n, d] and ``labeled.npy`` (positions) under benchmarks/data."""
    folder = DATA / f"{name}-{n}x{d}-L{n_labeled}"
    if not (folder / "x.npy").exists():
        folder.mkdir(parents=True, exist_ok=True)
        x = make_embeddings(n, d)
        labeled = np.random.default_rng(1).choice(n, size=n_labeled, replace=False).astype(np.int64)
        np.save(folder / "labeled.npy", np.sort(labeled))
        np.save(folder / "x.tmp.npy", x)
        os.replace(folder / "x.tmp.npy", folder / "x.npy")
    return folder


# ---------------------------------------------------------------------------------------
# Worker side (one subprocess per run; peers' interpreters have numpy and the peer only)
# ---------------------------------------------------------------------------------------
def numpy_loop(x: np.ndarray, labeled: np.ndarray, budget: int) -> list[int]:
    """The plain incremental greedy (Sener & Savarese 2018 / google active-learning style):
    float32 ``‖x‖² − 2x·c + ‖c‖²`` per new center (one matrix-vector product per pick)."""
    x_sq = np.einsum("ij,ij->i", x, x)
    mind = np.full(x.shape[0], np.inf, dtype=np.float32)
    for a in range(0, labeled.shape[0], 256):
        c = x[labeled[a : a + 256]]
        c_sq = np.einsum("ij,ij->i", c, c)
        for r in range(0, x.shape[0], 16384):
            d = x_sq[r : r + 16384, None] - 2 * (x[r : r + 16384] @ c.T) + c_sq[None, :]
            np.minimum(mind[r : r + 16384], d.min(axis=1), out=mind[r : r + 16384])
    picks: list[int] = []
    if labeled.shape[0] == 0:
        mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        first = int(np.argmin(x_sq - 2 * (x @ mean)))
        picks.append(first)
        mind = np.maximum(x_sq - 2 * (x @ x[first]) + x_sq[first], 0)
    mind[labeled] = -np.inf
    while len(picks) < budget:
        if picks:
            mind[picks[-1]] = -np.inf
        j = int(np.argmax(mind))
        picks.append(j)
        np.minimum(mind, x_sq - 2 * (x @ x[j]) + x_sq[j], out=mind)
    return picks


def _skactiveml(x: np.ndarray, labeled: np.ndarray, budget: int) -> list[int]:
    from skactiveml.pool._core_set import k_greedy_center

    y = np.full(x.shape[0], np.nan)
    y[labeled] = 0
    picks, _ = k_greedy_center(x, y, batch_size=budget, random_state=0)
    return [int(i) for i in picks]


def _small_text(x: np.ndarray, labeled: np.ndarray, budget: int) -> list[int]:
    # greedy_coreset indexes new picks as positions among the unlabelled rows *and* as rows
    # of x, so the unlabelled rows must come first (as small-text's own query() arranges).
    from small_text.query_strategies.coresets import greedy_coreset

    unl = np.setdiff1d(np.arange(x.shape[0]), labeled)
    x2 = np.concatenate([x[unl], x[labeled]])
    picks = greedy_coreset(x2, np.arange(unl.shape[0]), np.arange(unl.shape[0], x2.shape[0]), budget,
                           distance_metric="euclidean")
    return [int(unl[i]) for i in picks]


def _alscale(
    impl: str, x: np.ndarray, labeled: np.ndarray, budget: int, opts: dict[str, Any]
) -> tuple[list[int], dict]:
    from alscale.strategies import FanoutShards, InProcessFanout, ShardState
    from alscale.strategies.kcenter import kcenter_approx, kcenter_greedy

    n = x.shape[0]
    bounds = np.linspace(0, n, int(opts.get("shards", 1)) + 1).astype(int)
    states = [ShardState(np.arange(a, b, dtype=np.int64), None, x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    shards = FanoutShards(InProcessFanout(states))
    shards.exclude(labeled)
    reset_peak()
    base = status_bytes("VmHWM:")
    t0 = time.perf_counter()
    if impl == "alscale_approx":
        r = kcenter_approx(shards, budget, backend=opts.get("backend", "auto"))
    else:
        r = kcenter_greedy(shards, budget, backend=opts.get("backend", "auto"), mode=opts.get("mode", "sharded"))
    seconds = time.perf_counter() - t0
    s = r.stats
    return [int(i) for i in r.row_ids_B], {
        "seconds": seconds,
        "peak_growth_bytes": max(0, status_bytes("VmHWM:") - base),
        "round_trips": s.round_trips,
        "rounds": s.rounds,
        "picks_per_round": s.picks_per_round,
        "offered": s.offered,
        "backend": s.backend,
        "mode": s.mode,
        "phase_seconds": {k: round(v, 4) for k, v in s.seconds.items()},
    }


def worker(impl: str, folder: str, budget: int, opts: dict[str, Any], out: str) -> dict[str, Any]:
    x = np.load(Path(folder) / "x.npy")
    labeled = np.load(Path(folder) / "labeled.npy")
    if impl.startswith("alscale"):
        from alscale.index import get_backend

        get_backend(opts.get("backend", "auto"))  # import torch / faiss before the clock starts
        picks, info = _alscale(impl, x, labeled, budget, opts)
    else:
        if impl == "skactiveml":
            import skactiveml.pool._core_set  # noqa: F401  (imports before the clock starts)
        elif impl == "small_text":
            import small_text.query_strategies.coresets  # noqa: F401
        fn = {"numpy_loop": numpy_loop, "skactiveml": _skactiveml, "small_text": _small_text}[impl]
        reset_peak()
        base = status_bytes("VmHWM:")
        t0 = time.perf_counter()
        picks = fn(x, labeled, budget)
        info = {"seconds": time.perf_counter() - t0, "peak_growth_bytes": max(0, status_bytes("VmHWM:") - base)}
    np.save(out, np.asarray(picks, dtype=np.int64))
    return info


# ---------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------
def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT_BYTES, AS_LIMIT_BYTES))


def run_once(impl: str, folder: Path, budget: int, opts: dict[str, Any], python: Path) -> dict[str, Any]:
    out = folder / f"picks-{impl}-{os.getpid()}.npy"
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", impl, "--inputs", str(folder),
           "--budget", str(budget), "--options", json.dumps(opts), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, preexec_fn=_limit, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {TIMEOUT_S} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["picks"] = np.load(out)
    out.unlink()
    return info


SKIP: set[str] = set()  # implementations to leave out (--skip)


def measure(impl: str, folder: Path, budget: int, opts: dict[str, Any], repeats: int,
            python: Path = ALSCALE_PYTHON) -> dict[str, Any]:
    if impl in SKIP:
        return {"impl": impl, "options": opts, "error": "skipped (--skip)"}
    runs = [run_once(impl, folder, budget, opts, python) for _ in range(repeats)]
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"impl": impl, "options": opts, "error": runs[0]["error"]}
    res = {k: v for k, v in ok[-1].items() if k not in ("seconds", "peak_growth_bytes")}
    res.update({
        "impl": impl,
        "options": opts,
        "seconds_all": [round(r["seconds"], 4) for r in ok],
        "seconds": round(statistics.median(r["seconds"] for r in ok), 4),
        "peak_growth_bytes": int(statistics.median(r["peak_growth_bytes"] for r in ok)),
        "load_avg": round(os.getloadavg()[0], 2),
    })
    if len({tuple(r["picks"].tolist()) for r in ok}) > 1:
        res["note"] = "picks differed between repeats"
    return res


def _same(a: np.ndarray | None, b: np.ndarray | None) -> str:
    if a is None or b is None:
        return "-"
    if np.array_equal(a, b):
        return "yes"
    overlap = len(set(a.tolist()) & set(b.tolist())) / max(1, len(b))
    return f"no ({overlap:.0%} overlap)"


def coverage_radius(folder: Path, picks: np.ndarray) -> float:
    """max over rows of the distance to the nearest pick or labelled row (float32 GEMM)."""
    from alscale.index import get_backend

    x = np.load(folder / "x.npy")
    centers = x[np.concatenate([np.load(folder / "labeled.npy"), picks])]
    be = get_backend("auto")
    mind = be.to_numpy(be.min_sq_dist_update(x, centers, np.full(x.shape[0], np.inf, np.float32)))
    return float(np.sqrt(mind.max()))


def scenario_peers(repeats: int) -> list[dict[str, Any]]:
    folder = inputs("peers", 20_500, 128, 500)
    budget = 100
    res = [measure("alscale", folder, budget, {"shards": 1, "mode": "sharded"}, repeats),
           measure("numpy_loop", folder, budget, {}, repeats)]
    if PEERS_PYTHON.exists():
        res.append(measure("skactiveml", folder, budget, {}, repeats, PEERS_PYTHON))
        res.append(measure("small_text", folder, budget, {}, 1, PEERS_PYTHON))  # ~3 min a run
    return _finish("peers", {"N": 20_500, "U": 20_000, "L": 500, "D": 128, "B": budget}, res)


def scenario_million(repeats: int) -> list[dict[str, Any]]:
    folder = inputs("million", 1_000_000, 128, 0)
    budget = 1000
    res = [
        measure("alscale", folder, budget, {"shards": 1, "mode": "sharded"}, repeats),
        measure("alscale", folder, budget, {"shards": 2, "mode": "sharded"}, repeats),
        measure("alscale", folder, budget, {"shards": 2, "mode": "gather"}, repeats),
        measure("numpy_loop", folder, budget, {}, 1),  # ~30 s a run
    ]
    return _finish("million", {"N": 1_000_000, "L": 0, "D": 128, "B": budget}, res)


def scenario_approx(repeats: int) -> list[dict[str, Any]]:
    folder = inputs("million", 1_000_000, 128, 0)
    budget = 1000
    res = [measure("alscale", folder, budget, {"shards": 2, "mode": "sharded"}, 1)]
    for shards in (2, 8):
        res.append(measure("alscale_approx", folder, budget, {"shards": shards}, repeats))
    for r in res:
        if "picks" in r:
            r["coverage_radius"] = round(coverage_radius(folder, r["picks"]), 5)
    return _finish("approx", {"N": 1_000_000, "L": 0, "D": 128, "B": budget}, res)


SCENARIOS: dict[str, Callable[[int], list[dict[str, Any]]]] = {
    "peers": scenario_peers,
    "million": scenario_million,
    "approx": scenario_approx,
}


def _git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:
        return None


def _finish(scenario: str, config: dict[str, Any], res: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ref = next((r for r in res if r["impl"] == "alscale" and "picks" in r), None)
    for r in res:
        r["scenario"] = scenario
        r["config"] = config
        r["same_picks_as_alscale"] = _same(r.get("picks"), None if ref is None else ref.get("picks"))
    return res


def print_table(rows: list[dict[str, Any]]) -> None:
    by_scenario: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_scenario.setdefault(r["scenario"], []).append(r)
    for scenario, rs in by_scenario.items():
        cfg = rs[0]["config"]
        print(f"\n== k-center {scenario}: " + ", ".join(f"{k}={v:,}" for k, v in cfg.items()))
        base = next((r["seconds"] for r in rs if r["impl"] == "alscale" and "seconds" in r), None)
        print(f"{'implementation':<34} {'median s':>9} {'x alscale':>9} {'peak MB':>8} {'RT':>4} "
              f"{'radius':>8}  same picks")
        for r in rs:
            name = r["impl"] + "".join(f" {k}={v}" for k, v in r["options"].items() if k != "backend")
            if "error" in r:
                print(f"{name:<34} {'error: ' + r['error']}")
                continue
            ratio = f"{r['seconds'] / base:.1f}" if base else "-"
            print(f"{name:<34} {r['seconds']:>9.3f} {ratio:>9} {r['peak_growth_bytes'] / 2**20:>8.0f} "
                  f"{r.get('round_trips', '-'):>4} {r.get('coverage_radius', '-'):>8}  {r['same_picks_as_alscale']}"
                  f"   (runs {r['seconds_all']}, load {r['load_avg']})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", nargs="+", default=["peers", "million", "approx"], choices=sorted(SCENARIOS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=[], metavar="IMPL",
                   help="leave implementations out, e.g. small_text (about 3-6 min a run)")
    p.add_argument("--worker")
    p.add_argument("--inputs")
    p.add_argument("--budget", type=int)
    p.add_argument("--options", default="{}")
    p.add_argument("--out")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.inputs, args.budget, json.loads(args.options), args.out)))
        return
    SKIP.update(args.skip)
    rows: list[dict[str, Any]] = []
    meta = {
        "benchmark": "selection",
        "family": "kcenter",
        "git_revision": _git_revision(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for name in args.scenarios:
        got = SCENARIOS[name](args.repeats)
        rows += got
        with RESULTS.open("a") as f:
            for r in (r for r in got if r.get("error") != "skipped (--skip)"):
                rec = {**meta, **{k: v for k, v in r.items() if k != "picks"}}
                f.write(json.dumps(rec, default=str) + "\n")
    print_table(rows)


if __name__ == "__main__":
    main()
