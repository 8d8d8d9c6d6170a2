"""BADGE / k-means++ selection: alscale against peers and a plain numpy loop; k-means‖ vs exact.

Scenarios (the BADGE part of issue 3; the k-center part lives in ``benchmarks/selection.py``):

- ``peers``: U = 20,000 unlabelled rows, C = 10 classes, D = 256, budget B = 100 — alscale
  ``badge`` (in-process, one shard) against small-text 1.4.1 ``BADGE.sample``,
  scikit-activeml 1.0.1 ``Badge.query``, DISTIL 0.2.0 ``init_centers`` (on the materialised
  float32 gradients, which it needs as input; their construction is not timed) and a plain
  incremental numpy loop with the factored distance (the BADGE reference code's formula).
  The peers run from ``.venv-peers`` on the same ``.npy`` inputs.
- ``million``: N = 1,000,000, C = 100, D = 256, B = 1,000 — alscale ``badge`` exact (one and
  two in-process shards) and ``badge_parallel`` (k-means‖, default ℓ = 0.5·B, 5 rounds; and
  Spark's ℓ = 2·B, 2 rounds).

Every run is a fresh subprocess with a wall-clock timeout and an address-space cap; it
reports the selection call's wall time and its peak RSS growth (``VmHWM`` reset through
``/proc/self/clear_refs`` after the inputs are in memory, so "beyond the inputs"). The
parent scores each batch by the k-means objective in gradient space (Σ over rows of the
squared distance to the nearest pick; lower = more diverse), reports round trips, and
prints a table with medians over repeats (different seeds) and ratios. Results: one JSON
line per implementation and scenario in ``benchmarks/results/selection.jsonl``.

    python benchmarks/selection_badge.py [--scenarios peers million] [--repeats 3] [--impls badge ...]

Other benchmarks may share this 2-core machine: the load average is recorded with each
result; compare medians, and rerun when ``load`` is high.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from peakmem import reset_peak, status_bytes  # sibling module (see peakmem)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "badge"
RESULTS = ROOT / "benchmarks" / "results"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
TIMEOUT_S = 600
AS_LIMIT_BYTES = 16 << 30

PEERS = ("small_text", "skactiveml", "distil")


# ---------------------------------------------------------------------------------------
# Inputs (deterministic)
# ---------------------------------------------------------------------------------------
def make_inputs(n: int, c: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Predictive probabilities ``[n, c]`` (float32) from clustered logits, embeddings ``[n, d]``.

    The embeddings come from 50 Gaussian clusters; the logits are a random linear read-out
    of them with noise, so confident and uncertain rows both occur (as after training).
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((50, d)).astype(np.float32) * 2.0
    emb = np.empty((n, d), dtype=np.float32)
    probs = np.empty((n, c), dtype=np.float32)
    w = rng.standard_normal((d, c)).astype(np.float32) / np.sqrt(d) * 3.0
    for lo in range(0, n, 65536):
        hi = min(lo + 65536, n)
        e = rng.standard_normal((hi - lo, d), dtype=np.float32)
        e += centers[rng.integers(0, 50, hi - lo)]
        emb[lo:hi] = e
        z = e @ w + rng.standard_normal((hi - lo, c), dtype=np.float32)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        probs[lo:hi] = z
    return probs, emb


def _inputs_dir(n: int, c: int, d: int) -> Path:
    path = DATA / f"n{n}-c{c}-d{d}"
    if not (path / "probs.npy").exists():
        path.mkdir(parents=True, exist_ok=True)
        probs, emb = make_inputs(n, c, d)
        np.save(path / "probs.npy", probs)
        np.save(path / "emb.npy", emb)
    return path


# ---------------------------------------------------------------------------------------
# Workers (run in a subprocess; only numpy and the library under test are imported)
# ---------------------------------------------------------------------------------------
def _worker(impl: str, inputs: str, budget: int, seed: int, shards: int, options: dict) -> dict[str, Any]:
    probs = np.load(Path(inputs) / "probs.npy")
    emb = np.load(Path(inputs) / "emb.npy")
    n, c = probs.shape
    extra: dict[str, Any] = {}
    if impl == "distil":  # needs the materialised gradients as input (not timed)
        y = probs.argmax(axis=1)
        scale = probs.copy()
        scale[np.arange(n), y] -= 1.0
        grads = (scale[:, :, None] * emb[:, None, :]).reshape(n, -1).astype(np.float32)
        del scale
    if impl.startswith("badge"):  # alscale's input is log-probabilities
        lp = np.log(np.maximum(probs, np.float32(1e-30)))[:, None, :]
    _import(impl)  # imports are not timed
    base = status_bytes("VmRSS:")
    reset_peak()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if impl.startswith("badge"):
        picks, extra = _run_alscale(impl, lp, emb, budget, seed, shards, options)
    elif impl == "numpy_ref":
        picks = _numpy_reference(probs, emb, budget, seed)
    elif impl == "small_text":
        from small_text.integrations.pytorch.query_strategies.strategies import BADGE

        np.random.seed(seed)
        idx = np.arange(n)
        strategy = BADGE(num_classes=c)
        picks = strategy.sample(None, None, idx, np.array([], int), None, budget, emb, embeddings_proba=probs)
    elif impl == "skactiveml":
        picks = _skactiveml(probs, emb, budget, seed)
    elif impl == "distil":
        from distil.active_learning_strategies.badge import init_centers

        np.random.seed(seed)
        picks = init_centers(grads, budget, "cpu")
    else:
        raise SystemExit(f"unknown implementation {impl}")
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": seconds,
        # CPU seconds of all threads: less sensitive to other jobs on the machine than wall time
        "cpu_seconds": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "peak_growth_bytes": max(0, status_bytes("VmHWM:") - base),
        "picks": [int(p) for p in picks],
        **extra,
    }


def _import(impl: str) -> None:
    if impl.startswith("badge"):
        sys.path.insert(0, str(ROOT))
        import alscale.strategies.badge  # noqa: F401
        import alscale.strategies.kmeanspp  # noqa: F401
    elif impl == "small_text":
        import small_text.integrations.pytorch.query_strategies.strategies  # noqa: F401
    elif impl == "skactiveml":
        import skactiveml.pool  # noqa: F401
    elif impl == "distil":
        import distil.active_learning_strategies.badge  # noqa: F401


def _run_alscale(impl, lp, emb, budget, seed, shards, options):
    sys.path.insert(0, str(ROOT))
    from alscale.strategies import FanoutShards, InProcessFanout, ShardState, kmeanspp
    from alscale.validation import check_embeddings, check_log_probs

    # the same boundary checks as alscale.select, then the loop directly (to read its stats)
    check_log_probs(lp)
    check_embeddings(emb, lp.shape[0])
    n = lp.shape[0]
    bounds = np.linspace(0, n, shards + 1).astype(int)
    states = [ShardState(np.arange(a, b), lp[a:b], emb[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    sh = FanoutShards(InProcessFanout(states))
    if impl == "badge":
        sel, stats = kmeanspp.seed_exact(sh, budget, space="badge", seed=seed)
    else:
        sel, stats = kmeanspp.seed_parallel(sh, budget, space="badge", seed=seed, **options)
    return sel.indices_B, {
        "round_trips": stats.round_trips,
        "syncs": stats.syncs,
        "trials": stats.trials,
        "rounds": stats.rounds,
        "exact_rows": stats.exact_rows,
    }


def _numpy_reference(probs: np.ndarray, emb: np.ndarray, budget: int, seed: int) -> list[int]:
    """Textbook BADGE with the factored distance (as the reference code since 2023)."""
    rng = np.random.default_rng(seed)
    n = probs.shape[0]
    a = probs.copy()
    a[np.arange(n), a.argmax(axis=1)] -= 1.0
    na = np.einsum("nc,nc->n", a, a, dtype=np.float64)
    nh = np.einsum("nd,nd->n", emb, emb, dtype=np.float64)
    norms = na * nh
    picks = [int(np.argmax(norms))]
    d2 = np.full(n, np.inf)
    for _ in range(budget - 1):
        j = picks[-1]
        d = norms + norms[j] - 2.0 * (a @ a[j]).astype(np.float64) * (emb @ emb[j]).astype(np.float64)
        np.minimum(d2, np.maximum(d, 0.0), out=d2)
        d2[picks] = 0.0
        picks.append(int(rng.choice(n, p=d2 / d2.sum())))
    return picks


def _skactiveml(probs: np.ndarray, emb: np.ndarray, budget: int, seed: int) -> list[int]:
    from skactiveml.base import SkactivemlClassifier
    from skactiveml.pool import Badge

    class Fixed(SkactivemlClassifier):  # returns the given probabilities and embeddings
        def __init__(self, P=None, H=None, classes=None, missing_label=np.nan):
            super().__init__(classes=classes, missing_label=missing_label)
            self.P, self.H = P, H

        def fit(self, X, y, sample_weight=None):
            return self

        def predict_proba(self, X, return_embeddings=False):
            idx = X[:, 0].astype(int)
            return (self.P[idx], self.H[idx]) if return_embeddings else self.P[idx]

    n, c = probs.shape
    X = np.arange(n, dtype=float)[:, None]
    y = np.full(n, np.nan)
    clf = Fixed(P=probs.astype(np.float64), H=emb.astype(np.float64), classes=np.arange(c))
    qs = Badge(clf_embedding_flag_name="return_embeddings", random_state=seed)
    return qs.query(X, y, clf=clf, fit_clf=False, batch_size=budget)


def _worker_main() -> None:
    impl, inputs, budget, seed, shards, options = json.loads(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT_BYTES, AS_LIMIT_BYTES))
    import logging

    logging.basicConfig(level=logging.WARNING)
    print("RESULT " + json.dumps(_worker(impl, inputs, budget, seed, shards, options)), flush=True)


# ---------------------------------------------------------------------------------------
# Parent: run, score, report
# ---------------------------------------------------------------------------------------
def _run(impl: str, inputs: Path, budget: int, seed: int, shards: int = 1, options: dict | None = None) -> dict:
    python = str(PEERS_PYTHON) if impl in PEERS else sys.executable
    args = json.dumps([impl, str(inputs), budget, seed, shards, options or {}])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        out = subprocess.run(
            [python, __file__, "--worker", args], capture_output=True, text=True, timeout=TIMEOUT_S, env=env
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {TIMEOUT_S} s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:300]}


def _cost(inputs: Path, picks: list[int]) -> float:
    sys.path.insert(0, str(ROOT))
    from alscale.strategies.kmeanspp import seeding_cost

    probs = np.load(inputs / "probs.npy", mmap_mode="r")
    emb = np.load(inputs / "emb.npy", mmap_mode="r")
    a = np.array(probs)
    a[np.arange(a.shape[0]), a.argmax(axis=1)] -= 1.0
    return seeding_cost(a, emb, np.asarray(picks, dtype=np.int64))


def _load() -> float:
    return os.getloadavg()[0]


def bench(
    scenario: str, impls: list[tuple[str, int, dict]], n: int, c: int, d: int, budget: int, repeats: int,
    only: list[str] | None = None,
) -> list[dict]:
    inputs = _inputs_dir(n, c, d)
    rows = []
    for impl, shards, options in impls:
        label = impl + (f"[{shards} shards]" if shards > 1 else "")
        if only and label not in only:
            continue
        runs, costs = [], []
        for rep in range(repeats):
            load = _load()
            res = _run(impl, inputs, budget, seed=rep, shards=shards, options=options)
            res["load"] = load
            if "error" in res:
                print(f"  {label}: {res['error']}", flush=True)
                runs.append(res)
                break
            costs.append(_cost(inputs, res["picks"]))
            res["first_pick"] = res["picks"][0]
            res["distinct"] = len(set(res["picks"]))
            del res["picks"]
            runs.append(res)
            print(f"  {label} rep {rep}: {res['seconds']:.2f} s (cpu {res['cpu_seconds']:.1f} s), "
                  f"peak +{res['peak_growth_bytes'] / 2**20:.0f} MB, "
                  f"cost {costs[-1]:.4g}, load {load:.1f}", flush=True)
        ok = [r for r in runs if "error" not in r]
        row = {
            "benchmark": "selection_badge",
            "scenario": scenario,
            "impl": label,
            "options": options,
            "n": n, "c": c, "d": d, "budget": budget,
            "seconds_median": statistics.median(r["seconds"] for r in ok) if ok else None,
            "seconds_all": [round(r["seconds"], 3) for r in ok],
            "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in ok) if ok else None,
            "peak_growth_mb_median": statistics.median(r["peak_growth_bytes"] for r in ok) / 2**20 if ok else None,
            "round_trips": [r.get("round_trips") for r in ok],
            "cost_mean": statistics.mean(costs) if costs else None,
            "cost_sd": statistics.stdev(costs) if len(costs) > 1 else None,
            "first_picks": [r["first_pick"] for r in ok],
            "distinct": [r["distinct"] for r in ok],
            "load": [round(r["load"], 2) for r in runs],
            "error": runs[-1].get("error") if runs and "error" in runs[-1] else None,
            "extra": {k: [r.get(k) for r in ok] for k in ("syncs", "trials", "rounds", "exact_rows")},
        }
        rows.append(row)
    return rows


def report(rows: list[dict], reference: str | None) -> None:
    print(f"\n{'implementation':<28} {'median s':>9} {'cpu s':>7} {'peak MB':>8} {'RT':>5} {'cost mean±sd':>22} "
          f"{'ratio':>8}")
    ref_t = next((r["seconds_median"] for r in rows if r["impl"] == reference), None)
    for r in rows:
        t = r["seconds_median"]
        if t is None:
            print(f"{r['impl']:<28} {'-':>9} {'-':>7} {'-':>8} {'-':>5} {'-':>22}  {r['error']}")
            continue
        rt = r["round_trips"][0] if r["round_trips"] and r["round_trips"][0] is not None else "-"
        cost = f"{r['cost_mean']:.5g}±{(r['cost_sd'] or 0):.2g}"
        ratio = f"{t / ref_t:.1f}x" if ref_t else ""
        print(f"{r['impl']:<28} {t:>9.2f} {r['cpu_seconds_median']:>7.1f} {r['peak_growth_mb_median']:>8.0f} "
              f"{rt!s:>5} {cost:>22} {ratio:>8}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker_main()
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", nargs="+", default=["peers", "million"], choices=["peers", "million"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--impls", nargs="+", help="only these implementations (labels as printed, e.g. badge)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from alscale.runtime import output

    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"git": output.git_revision(), "machine": output.machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    all_rows = []
    if "peers" in args.scenarios:
        print("BADGE, U=20,000, C=10, D=256, B=100", flush=True)
        impls = [("badge", 1, {}), ("numpy_ref", 1, {})] + [(p, 1, {}) for p in PEERS]
        rows = bench("peers", impls, 20_000, 10, 256, 100, args.repeats, args.impls)
        report(rows, "badge")
        all_rows += rows
    if "million" in args.scenarios:
        print("\nBADGE, N=1,000,000, C=100, D=256, B=1,000", flush=True)
        impls = [
            ("badge", 1, {}),
            ("badge", 2, {}),
            ("badge_parallel", 1, {"oversampling": 0.5, "rounds": 5}),
            ("badge_parallel_spark", 1, {"oversampling": 2.0, "rounds": 2}),
        ]
        rows = bench("million", impls, 1_000_000, 100, 256, 1000, args.repeats, args.impls)
        report(rows, "badge")
        all_rows += rows
    with open(RESULTS / "selection.jsonl", "a") as f:
        for row in all_rows:
            f.write(json.dumps({**row, **meta}) + "\n")


if __name__ == "__main__":
    main()
