"""The acquisition-throughput suite behind ``alscale bench``: scenarios x pool sizes x workers
x executors x backends, peers side by side, cost growth, a cluster model, BENCHMARKS.md.

Every measurement is a fresh subprocess under a wall-clock timeout and an address-space cap:

- **engine runs** (``--one CONFIG``, this interpreter): a full ``alscale run`` job
  (``run_job``) on a cached synthetic pool; recorded: the manifest's per-phase seconds
  (validate, startup, read, score, select, write), rows/s, coordinator<->shard round trips,
  and the driver's peak RSS growth over its RSS after imports (``VmHWM`` after a reset; with
  the Ray executor the shard actors' memory is not in it, say so);
- **peer runs** (``--peer NAME CONFIG``, ``.venv-peers``' interpreter, numpy + the peer only):
  the peer's selection call on the same pool's columns as ``.npy`` (loaded before timing);
  a peer that exceeds the timeout or the memory cap is recorded as such with its input size.

Scenarios (synthetic pools from ``alscale.pool.synth_pool``, cached in ``data/bench/``):
entropy (K=1, C=10), BALD and power-BALD (K=5, C=10), k-center and BADGE (E=32; C=10),
BatchBALD (K=20, C=10, b=10, M=1,000; at most 100k rows: its cost grows as U*M*C*b), and
entropy scored by a model (MLP over D=64 features: the ``score`` phase). Sweeps: pool size
(100k, 1M, 10M), workers (1, 2, 4) x executor (local, Ray) at 1M, k-center backends
(numpy, torch, faiss) and budgets (100, 1,000, 10,000) at 1M.

Outputs: ``benchmarks/results/suite/runs.jsonl`` (one line per run, appended),
``summary.json`` (this invocation), PNG plots, and ``BENCHMARKS.md`` at the repository root.

    python benchmarks/suite.py [--quick] [--no-peers] [--only entropy kcenter ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # the sibling modules (peakmem, selection, ...) under any interpreter
    sys.path.insert(0, str(BENCH))

from peakmem import reset_peak, status_bytes  # noqa: E402

DATA = ROOT / "data" / "bench"
RESULTS = BENCH / "results" / "suite"  # the committed results, behind BENCHMARKS.md (--update-docs)
SCRATCH = ROOT / "out" / "bench"  # the default results directory (git-ignored)
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
MEM_CAP_BYTES = 20 << 30
PEER_PACKAGES = ["baal", "batchbald-redux", "modAL-python", "scikit-activeml", "small-text", "decile-distil",
                 "pyarrow", "psutil"]

# name -> pool shape and job
SCENARIOS: dict[str, dict[str, Any]] = {
    "entropy": {"strategy": "entropy", "k": 1, "c": 10, "e": 0, "budget": 1000},
    "bald": {"strategy": "bald", "k": 5, "c": 10, "e": 0, "budget": 1000},
    "power": {"strategy": "power", "k": 5, "c": 10, "e": 0, "budget": 1000, "options": {"base": "bald"}},
    "kcenter": {"strategy": "kcenter", "k": 1, "c": 10, "e": 32, "budget": 1000},
    "badge": {"strategy": "badge", "k": 1, "c": 10, "e": 32, "budget": 1000},
    "batchbald": {"strategy": "batchbald", "k": 20, "c": 10, "e": 0, "budget": 10, "max_rows": 100_000},
    "entropy_model": {"strategy": "entropy", "k": 0, "c": 10, "e": 0, "d": 64, "budget": 1000,
                      "model": {"factory": "mlp", "kwargs": {"num_classes": 10, "hidden": 128}},
                      "max_rows": 1_000_000},
    "egl": {"strategy": "egl", "k": 1, "c": 10, "e": 32, "budget": 1000},
    # Cold start: 100 labels, nothing labelled yet.
    "typiclust": {"strategy": "typiclust", "k": 1, "c": 10, "e": 32, "budget": 100, "max_rows": 1_000_000},
    # ProbCover's δ-graph costs N²·E (258 s at 100k here): 20k in the default sizes.
    "probcover": {"strategy": "probcover", "k": 1, "c": 10, "e": 32, "budget": 100, "max_rows": 20_000},
    # ALFA-Mix: an MLP's head and the pool's labels of the labelled rows (every 200th).
    "alfamix": {"strategy": "alfamix", "k": 0, "c": 10, "e": 0, "d": 64, "budget": 100,
                "model": {"factory": "mlp", "kwargs": {"num_classes": 10, "hidden": 128}}, "max_rows": 1_000_000},
    # SEALS: entropy over the 10 nearest unlabelled neighbours of every labelled row.
    "entropy_seals": {"strategy": "entropy", "k": 1, "c": 10, "e": 32, "budget": 1000, "seals": 10,
                      "max_rows": 1_000_000},  # exact kNN of L = N/200 labelled rows: L·N·E
    # Huge batches: 10% of the pool.
    "cluster_margin": {"strategy": "cluster_margin", "k": 1, "c": 10, "e": 32, "budget_frac": 0.1,
                       "max_rows": 1_000_000},
}
#: Diversity scenarios start from a labelled set (every 200th row), as their peers require.
LABELED_EVERY = {"kcenter": 200, "badge": 200, "alfamix": 200, "entropy_seals": 200}

# peer name -> (scenario, function in peer_run); sizes they are tried at
PEERS: dict[str, dict[str, Any]] = {
    "modAL": {"scenarios": ["entropy"]},
    "scikit-activeml": {"scenarios": ["entropy", "kcenter", "badge", "batchbald", "typiclust", "probcover"]},
    "baal": {"scenarios": ["entropy", "bald", "batchbald"]},
    "batchbald_redux": {"scenarios": ["bald", "batchbald"], "max_rows": 100_000},  # BALD at 1M: 194 s
    # 330 s at 20k rows (a full distance pass per pick): only with --slow-peers.
    "small-text": {"scenarios": ["kcenter"], "max_rows": 20_000, "slow": True},
}
PEER_ROWS = {"entropy": [100_000, 1_000_000], "bald": [100_000, 1_000_000], "kcenter": [20_000, 100_000],
             "badge": [20_000, 100_000], "batchbald": [2_000, 10_000], "typiclust": [20_000, 100_000],
             "probcover": [20_000]}
#: --quick: the peers that answer in seconds.
QUICK_PEERS = {("modAL", "entropy", 100_000), ("scikit-activeml", "entropy", 100_000), ("baal", "entropy", 100_000),
               ("baal", "bald", 100_000), ("batchbald_redux", "batchbald", 2_000), ("baal", "batchbald", 2_000),
               ("scikit-activeml", "typiclust", 20_000)}


def budget_for(s: dict[str, Any], rows: int) -> int:
    return max(1, int(rows * s["budget_frac"])) if "budget_frac" in s else int(s["budget"])


def labeled_path(scenario: str, rows: int) -> Path | None:
    """Row ids 0, every, 2*every, ... (row_id = position in the synthetic pools), as Parquet."""
    every = LABELED_EVERY.get(scenario)
    if every is None:
        return None
    path = DATA / f"labeled-every{every}-{rows}.parquet"
    if not path.exists():
        import pyarrow as pa
        import pyarrow.parquet as pq

        DATA.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"row_id": np.arange(0, rows, every, dtype=np.int64)}), path)
    return path


# --------------------------------------------------------------------------------------
# Pools and peer inputs (generated once, cached)
# --------------------------------------------------------------------------------------

def pool_path(s: dict[str, Any], rows: int) -> Path:
    shape = f"d{s.get('d', 8)}-k{s['k']}-c{s['c']}-e{s['e']}"
    return DATA / f"pool-{shape}-{rows}.arrow"


def ensure_pool(s: dict[str, Any], rows: int) -> Path:
    path = pool_path(s, rows)
    if not path.exists():
        from alscale.pool import synth_pool

        DATA.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        synth_pool(str(path), rows=rows, dim=s.get("d", 8), classes=s["c"], seed=0, log_probs_samples=s["k"],
                   embedding_dim=s["e"])
        print(f"  generated {path.name} in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def ensure_npy(s: dict[str, Any], rows: int) -> dict[str, str]:
    """The pool's log-probs / embeddings as ``.npy`` files for the peers (same values)."""

    pool = ensure_pool(s, rows)
    out = {}
    for col, field in (("log_probs", "log_probs_N_K_C"), ("embedding", "embeddings_N_D")):
        if col == "embedding" and not s["e"]:
            continue
        path = pool.with_name(pool.stem + f"-{col}.npy")
        if not path.exists():
            from alscale.pool import read_shard
            from alscale.types import ShardSpec

            data = read_shard(ShardSpec(str(pool), 0, 0, rows), [col])
            np.save(path, np.asarray(getattr(data, field), dtype=np.float32))
        out[col] = str(path)
    return out


# --------------------------------------------------------------------------------------
# Subprocess side: one engine run / one peer run
# --------------------------------------------------------------------------------------

def one_engine_run(cfg: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import torch  # noqa: F401  (imported before the RSS baseline, like the pool reader)

    from alscale.jobspec import validate_job
    from alscale.runtime.coordinator import run_job

    s = SCENARIOS[cfg["scenario"]]
    raw: dict[str, Any] = {
        "pool": {"path": cfg["pool"]},
        "strategy": {"name": s["strategy"], "budget": cfg["budget"], "options": {**s.get("options", {}),
                                                                                 **cfg.get("options", {})},
                     **({"seals": s["seals"]} if s.get("seals") else {})},
        "runtime": {"executor": cfg["executor"], "shards": cfg["workers"]},
        "seed": 0,
    }
    if s.get("model"):
        raw["model"] = {**s["model"], "mc_samples": 1}
    if cfg.get("labeled"):
        raw["labeled"] = {"path": cfg["labeled"]}
    job = validate_job(raw)
    out = tempfile.mkdtemp(prefix="alscale-bench-")
    base = status_bytes("VmRSS:")
    reset_peak()
    t0 = time.perf_counter()
    try:
        result = run_job(job, out_dir=Path(out) / "out", progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    wall = time.perf_counter() - t0
    m = result.manifest
    return {"phase_seconds": m["phase_seconds"], "rows_per_s": m["rows_per_s"], "round_trips": m["round_trips"],
            "wall_s": wall, "peak_growth_mb": (status_bytes("VmHWM:") - base) / 2**20,
            "picks": result.selection.indices_B.tolist()}


def one_peer_run(peer: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Runs under the peers' interpreter: numpy and the peer only."""

    s = SCENARIOS[cfg["scenario"]]
    lp = np.load(cfg["npy"]["log_probs"])
    emb = np.load(cfg["npy"]["embedding"]) if "embedding" in cfg["npy"] else None
    b = cfg["budget"]
    labeled = np.asarray(cfg.get("labeled_ids", []), dtype=np.int64)
    fn = _peer_fn(peer, s["strategy"], lp, emb, b, labeled)
    base = status_bytes("VmRSS:")
    reset_peak()
    t0 = time.perf_counter()
    picks = fn()
    sec = time.perf_counter() - t0
    return {"select_s": sec, "peak_growth_mb": (status_bytes("VmHWM:") - base) / 2**20,
            "picks": [int(i) for i in list(picks)]}


def _peer_fn(peer: str, strategy: str, lp, emb, b: int, labeled=None):
    """The peer's own call for ``strategy`` on the pool's arrays; returns picks (pool positions)."""

    probs_N_C = np.exp(lp.mean(axis=1) if lp.shape[1] > 1 else lp[:, 0])
    if peer == "modAL" and strategy == "entropy":
        from modAL.uncertainty import entropy_sampling

        class Precomputed:  # modAL asks the classifier for probabilities; give it the pool's
            def predict_proba(self, X):
                return probs_N_C

        return lambda: entropy_sampling(Precomputed(), np.zeros((lp.shape[0], 1)), n_instances=b)[0]
    if peer == "scikit-activeml" and strategy == "entropy":
        from skactiveml.pool import uncertainty_scores

        return lambda: np.argsort(-uncertainty_scores(probs_N_C, method="entropy"), kind="stable")[:b]
    if peer == "baal" and strategy in ("entropy", "bald"):
        from baal.active.heuristics import BALD, Entropy

        probs = np.exp(lp).transpose(0, 2, 1)  # baal: [N, C, K]
        h = Entropy() if strategy == "entropy" else BALD()
        return lambda: h(probs)[:b]
    if peer == "batchbald_redux" and strategy == "bald":
        import torch
        from batchbald_redux.batchbald import get_bald_batch

        return lambda: get_bald_batch(torch.from_numpy(lp), b).indices
    if peer == "batchbald_redux" and strategy == "batchbald":
        import torch
        from batchbald_redux.batchbald import get_batchbald_batch

        return lambda: get_batchbald_batch(torch.from_numpy(lp), b, 1000).indices
    if peer == "baal" and strategy == "batchbald":
        from baal.active.heuristics import BatchBALD

        probs = np.exp(lp.astype(np.float64)).transpose(0, 2, 1).copy()
        h = BatchBALD(num_samples=b, num_draw=max(1, 1000 // lp.shape[1]))
        return lambda: np.argsort(-np.asarray(h.compute_score(probs)), kind="stable")[:b]
    if peer == "scikit-activeml" and strategy == "batchbald":
        from skactiveml.pool import batch_bald

        probas = np.exp(lp.astype(np.float64)).transpose(1, 0, 2).copy()
        return lambda: [int(np.nanargmax(r)) for r in batch_bald(probas, b, n_MC_samples=1000, random_state=0)]
    if peer == "scikit-activeml" and strategy == "kcenter":
        import selection

        return lambda: selection._skactiveml(emb, labeled, b)
    if peer == "small-text" and strategy == "kcenter":
        import selection

        return lambda: selection._small_text(emb, labeled, b)
    if peer == "scikit-activeml" and strategy == "badge":
        import selection_badge

        return lambda: selection_badge._skactiveml(probs_N_C, emb, b, 0)
    if peer == "scikit-activeml" and strategy in ("typiclust", "probcover"):
        from skactiveml.pool import ProbCover, TypiClust

        y = np.full(emb.shape[0], np.nan)
        y[labeled] = 0
        qs = TypiClust(random_state=0) if strategy == "typiclust" else ProbCover(n_classes=10, random_state=0)
        return lambda: qs.query(emb, y, batch_size=b)
    raise ValueError(f"no peer adapter {peer}/{strategy}")


# --------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------

def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_CAP_BYTES, MEM_CAP_BYTES))


def spawn(args: list[str], python: Path | str, timeout: float, cap: bool = True) -> dict[str, Any]:
    cmd = [str(python), str(Path(__file__).resolve()), *args]
    env = dict(os.environ)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
                              preexec_fn=_cap if cap else None)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])[-300:]
        if "MemoryError" in tail or "Cannot allocate memory" in tail or "bad_alloc" in tail:
            return {"error": f"out of memory under the {MEM_CAP_BYTES >> 30} GiB cap"}
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version(),
            "platform": platform.platform(), "gpu": None}


def plan(quick: bool, only: list[str] | None, peers: bool, slow_peers: bool = False) -> list[dict[str, Any]]:
    """Every run of this invocation, engine runs first."""
    runs: list[dict[str, Any]] = []

    def engine(scenario: str, rows: int, *, workers: int = 2, executor: str = "local", budget: int | None = None,
               options: dict | None = None, sweep: str = "size") -> None:
        s = SCENARIOS[scenario]
        if only and scenario not in only or rows > s.get("max_rows", 10**12):
            return
        runs.append({"kind": "engine", "scenario": scenario, "rows": rows, "workers": workers, "executor": executor,
                     "budget": budget or budget_for(s, rows), "options": options or {}, "sweep": sweep})

    sizes = [100_000] if quick else [100_000, 1_000_000, 10_000_000]
    for name in SCENARIOS:
        for rows in sizes:
            small = {"batchbald": 10_000, "probcover": 20_000}
            engine(name, small[name] if name in small and quick else rows)
    if quick:
        engine("entropy", 100_000, executor="ray", sweep="workers")
    else:
        for name in ("entropy", "kcenter"):
            for executor in ("local", "ray"):
                for w in (1, 2, 4):
                    engine(name, 1_000_000, workers=w, executor=executor, sweep="workers")
        for backend in ("numpy", "torch", "faiss"):
            engine("kcenter", 1_000_000, options={"backend": backend}, sweep="backend")
        for b in (100, 10_000):
            engine("kcenter", 1_000_000, budget=b, sweep="budget")
            engine("badge", 1_000_000, budget=b, sweep="budget")
        engine("batchbald", 10_000, sweep="size")
        engine("probcover", 20_000, sweep="size")
    if peers:
        for peer, p in PEERS.items():
            if p.get("slow") and not slow_peers:
                continue
            for scenario in p["scenarios"]:
                for rows in PEER_ROWS.get(scenario, []):
                    if only and scenario not in only or rows > p.get("max_rows", 10**12):
                        continue
                    if quick and (peer, scenario, rows) not in QUICK_PEERS:
                        continue
                    runs.append({"kind": "peer", "peer": peer, "scenario": scenario, "rows": rows,
                                 "budget": budget_for(SCENARIOS[scenario], rows), "sweep": "peers"})
                    engine(scenario, rows, sweep="peers")  # alscale on the same pool, same invocation
    seen, unique = set(), []
    for r in runs:
        key = json.dumps({k: v for k, v in r.items() if k != "sweep"}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def batch_key(r: dict[str, Any]) -> str:
    """Identity of a run's batch as a set (sha256 of its sorted row ids)."""
    if "batch_sha256" in r:
        return r["batch_sha256"]
    ids = np.sort(np.asarray(r["picks"], dtype=np.int64))
    return hashlib.sha256(ids.tobytes()).hexdigest()


def compact(rec: dict[str, Any]) -> dict[str, Any]:
    """A run's record as kept in runs.jsonl: its batch as a hash and its first 20 picks, not
    every row id (a 100k-row batch would be 1 MB a line)."""
    if "picks" not in rec:
        return rec
    out = {k: v for k, v in rec.items() if k != "picks"}
    out["batch_sha256"] = batch_key(rec)
    out["picks_head"] = list(rec["picks"][:20])
    return out


def execute(run: dict[str, Any], timeout: float) -> dict[str, Any]:
    s = SCENARIOS[run["scenario"]]
    rec = {**run, "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "load_avg": os.getloadavg()[0]}
    if run["kind"] == "engine":
        lab = labeled_path(run["scenario"], run["rows"])
        cfg = {**run, "pool": str(ensure_pool(s, run["rows"])), "labeled": str(lab) if lab else None}
        rec.update(spawn(["--one", json.dumps(cfg)], sys.executable, timeout, cap=run["executor"] == "local"))
    else:
        if not PEERS_PYTHON.exists():
            rec["error"] = "no .venv-peers (run `make peers` or `alscale bench --make-peers`)"
            return rec
        npy = ensure_npy(s, run["rows"])
        rec["input_mb"] = sum(Path(p).stat().st_size for p in npy.values()) / 2**20
        every = LABELED_EVERY.get(run["scenario"])
        ids = list(range(0, run["rows"], every)) if every else []
        rec.update(spawn(["--peer", run["peer"], json.dumps({**run, "npy": npy, "labeled_ids": ids})],
                         PEERS_PYTHON, timeout))
    return compact(rec)


def make_peers_venv() -> None:
    """Create ``.venv-peers`` with the peers (CPU torch first, as for alscale)."""
    if PEERS_PYTHON.exists():
        return
    venv = ROOT / ".venv-peers"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(PEERS_PYTHON), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *PEER_PACKAGES], check=True)


# --------------------------------------------------------------------------------------
# Analysis: table, growth fits, plots, cluster model, BENCHMARKS.md
# --------------------------------------------------------------------------------------

def run_key(r: dict[str, Any]) -> str:
    """What makes two runs the same configuration."""
    keys = ("kind", "peer", "scenario", "rows", "workers", "executor", "budget", "options")
    return json.dumps({k: r.get(k) for k in keys}, sort_keys=True)


def latest_runs(path: Path) -> list[dict[str, Any]]:
    """The latest record of every configuration in a runs.jsonl, in first-seen order."""
    latest: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            latest[run_key(r)] = r  # a later run replaces an earlier one, keeping its place
    return list(latest.values())


def seconds(r: dict[str, Any]) -> float | None:
    """Acquisition seconds: every phase but Ray start-up (engine) / the selection call (peer)."""
    if r.get("error"):
        return None
    if r["kind"] == "peer":
        return r["select_s"]
    return sum(v for k, v in r["phase_seconds"].items() if k != "startup")


def fit_growth(points: list[tuple[float, float]]) -> float | None:
    """Least-squares exponent b of t ~ a * x^b over (x, t) points (>= 2 distinct x)."""
    pts = [(math.log(x), math.log(t)) for x, t in points if t and t > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


EXPECTED = {"entropy": "N", "bald": "N·K·C", "power": "N·K·C", "kcenter": "N·B·E", "badge": "N·B·(E+C)",
            "batchbald": "N·b·M·C", "entropy_model": "N·(model FLOPs)", "egl": "N·(C+E)",
            "alfamix": "N·C·E (mixing) + candidates·B·E·iters",
            "entropy_seals": "L·(rows in the visited cells)·E (exact kNN, cell-pruned)",
            "typiclust": "N·(L+B)·E·iters (bounded) + Σ cluster²·E",
            "probcover": "N·(rows in the visited cells)·E (range search)", "cluster_margin": "N·k·E·iters + N log N"}


def engine_rows(recs: list[dict[str, Any]], sweep: str) -> list[dict[str, Any]]:
    return [r for r in recs if r["kind"] == "engine" and r["sweep"] == sweep]


def table_rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in recs:
        if r["kind"] != "engine":
            continue
        ph = r.get("phase_seconds", {})
        t = seconds(r)
        out.append([r["scenario"], f"{r['rows']:,}", str(r["workers"]), r["executor"],
                    r.get("options", {}).get("backend", "auto"), f"{r['budget']:,}",
                    *(f"{ph.get(p, 0):.2f}" if ph else "–" for p in ("read", "score", "select", "write")),
                    f"{t:.2f}" if t is not None else r.get("error", "error")[:40],
                    f"{r['rows'] / t:,.0f}" if t else "–", str(r.get("round_trips", "–")),
                    f"{r['peak_growth_mb']:.0f}" if "peak_growth_mb" in r else "–"])
    return out


HEAD = ["scenario", "rows", "workers", "executor", "backend", "budget", "read s", "score s", "select s", "write s",
        "total s", "rows/s", "round trips", "peak MB"]


def peer_rows(recs: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    engines = {(r["scenario"], r["rows"]): r for r in recs
               if r["kind"] == "engine" and r["workers"] == 2 and r["executor"] == "local" and not r.get("options")
               and r["budget"] == budget_for(SCENARIOS[r["scenario"]], r["rows"])}
    for r in recs:
        if r["kind"] != "peer":
            continue
        eng = engines.get((r["scenario"], r["rows"]))
        te, tp = (seconds(eng) if eng else None), seconds(r)
        sel = eng["phase_seconds"]["select"] if eng and not eng.get("error") else None
        same = "–"
        if eng and not r.get("error") and not eng.get("error") and r["scenario"] in ("entropy", "bald", "egl"):
            same = "yes" if batch_key(r) == batch_key(eng) else "no"
        out.append([r["scenario"], f"{r['rows']:,}", r["peer"],
                    f"{tp:.3f}" if tp is not None else r.get("error", "")[:60],
                    f"{te:.3f}" if te is not None else "–", f"{sel:.3f}" if sel is not None else "–",
                    f"{tp / te:.1f}×" if tp and te else "–", f"{tp / sel:.1f}×" if tp and sel else "–",
                    f"{r['peak_growth_mb']:.0f}" if "peak_growth_mb" in r else f"input {r.get('input_mb', 0):.0f} MB",
                    f"{eng['peak_growth_mb']:.0f}" if eng and "peak_growth_mb" in eng else "–", same])
    return out


PEER_HEAD = ["scenario", "rows", "peer", "peer s", "alscale s (job)", "alscale select s", "peer / alscale job",
             "peer / alscale select", "peer peak MB", "alscale peak MB", "same batch"]


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def growth(recs: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for name in SCENARIOS:
        pts = [(r["rows"], seconds(r)) for r in engine_rows(recs, "size") if r["scenario"] == name and seconds(r)]
        mem = [(r["rows"], r["peak_growth_mb"]) for r in engine_rows(recs, "size")
               if r["scenario"] == name and r.get("peak_growth_mb", 0) > 1]
        bpts = [(r["budget"], seconds(r)) for r in recs if r["kind"] == "engine" and r["scenario"] == name
                and r["rows"] == 1_000_000 and r["workers"] == 2 and r["executor"] == "local"
                and not r.get("options") and seconds(r)]
        gn, gm, gb = fit_growth(pts), fit_growth(mem), fit_growth(bpts)
        if gn is None and gb is None:
            continue
        out.append([name, EXPECTED[name], f"N^{gn:.2f}" if gn is not None else "–",
                    f"B^{gb:.2f}" if gb is not None else "–", f"N^{gm:.2f}" if gm is not None else "–"])
    return out


def plots(recs: list[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in SCENARIOS:
        rs = sorted((r for r in engine_rows(recs, "size") + engine_rows(recs, "peers")
                     if r["scenario"] == name and seconds(r) and r["workers"] == 2 and r["executor"] == "local"
                     and not r.get("options") and r["budget"] == budget_for(SCENARIOS[name], r["rows"])),
                    key=lambda r: r["rows"])
        if rs:
            axes[0].plot([r["rows"] for r in rs], [seconds(r) for r in rs], "o-", label=f"alscale {name}")
            axes[1].plot([r["rows"] for r in rs], [max(r.get("peak_growth_mb", 0), 1) for r in rs], "o-",
                         label=f"alscale {name}")
    for peer in PEERS:
        for scen in PEERS[peer]["scenarios"]:
            rs = sorted((r for r in recs if r["kind"] == "peer" and r["peer"] == peer and r["scenario"] == scen
                         and seconds(r)), key=lambda r: r["rows"])
            if rs:
                axes[0].plot([r["rows"] for r in rs], [seconds(r) for r in rs], "x--", label=f"{peer} {scen}")
                axes[1].plot([r["rows"] for r in rs], [max(r["peak_growth_mb"], 1) for r in rs], "x--",
                             label=f"{peer} {scen}")
    for ax, what in zip(axes, ("seconds (acquisition, excl. start-up)", "peak RSS growth, MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pool rows")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle("Cost against pool size (alscale solid, peers dashed)")
    fig.tight_layout()
    fig.savefig(out / "size.png", dpi=110)
    plt.close(fig)
    made.append("size.png")

    bud = [r for r in recs if r["kind"] == "engine" and r["rows"] == 1_000_000 and r["workers"] == 2
           and r["executor"] == "local" and not r.get("options") and r["scenario"] in ("kcenter", "badge")
           and seconds(r)]
    if bud:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name in ("kcenter", "badge"):
            rs = sorted((r for r in bud if r["scenario"] == name), key=lambda r: r["budget"])
            ax.plot([r["budget"] for r in rs], [seconds(r) for r in rs], "o-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="budget B", ylabel="seconds", title="Cost against budget, 1M rows")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "budget.png", dpi=110)
        plt.close(fig)
        made.append("budget.png")

    swept = {r["scenario"] for r in engine_rows(recs, "workers")}
    # Every run of a swept scenario at the sweep's size (a run shared with another sweep is
    # planned once and counts here too).
    wk = [r for r in recs if r["kind"] == "engine" and r["scenario"] in swept and not r.get("options")
          and r["rows"] == max((x["rows"] for x in engine_rows(recs, "workers")), default=0)
          and r["budget"] == budget_for(SCENARIOS[r["scenario"]], r["rows"])]
    if wk:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name in sorted({r["scenario"] for r in wk}):
            for ex in ("local", "ray"):
                rs = sorted((r for r in wk if r["scenario"] == name and r["executor"] == ex and seconds(r)),
                            key=lambda r: r["workers"])
                if rs:
                    ax.plot([r["workers"] for r in rs], [r["rows"] / seconds(r) for r in rs], "o-",
                            label=f"{name} {ex}")
        ax.set(xlabel="workers (shards)", ylabel="rows/s", title="Throughput against workers")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "workers.png", dpi=110)
        plt.close(fig)
        made.append("workers.png")
    return made


# ImageNet on a GPU cluster, on paper. Assumptions (documented in BENCHMARKS.md):
IMAGENET = {"rows": 1_281_167, "emb": 2048, "classes": 1000, "budget": 10_000}
ASSUME = {
    "resnet50_img_per_s_per_gpu": 2500.0,  # fp16/bf16 inference incl. JPEG decode on ~8 CPU cores per GPU
    "startup_s": 60.0,  # Ray actors placed, torch + model loaded on every GPU
    "gpu_flops": 50e12,  # sustained fp32 GEMM (TF32) on an A100 for the distance updates
    "rpc_s": 0.002,  # one coordinator <-> all-shards fan-out on a cluster network
}


def cluster_model(recs: list[dict[str, Any]]) -> list[list[str]]:
    """Predicted wall time of one ImageNet acquisition on G GPUs (one shard per GPU).

    score  = N / (G * r_resnet)                       (assumed throughput, embarrassingly parallel)
    entropy select = measured per-row CPU cost here * N / G + B-row merge
    k-center select = at most B * N/G * E multiply-adds per shard on the GPU (the eager bound; the
                      lazy updates do far fewer) + the round trips measured here at B = 10,000
    BADGE select    = the same distance work on the factored gradient embedding (E + C terms per
                      row: two dot products) + its measured round trips
    """
    n, e, b = IMAGENET["rows"], IMAGENET["emb"], IMAGENET["budget"]

    def trips(scenario: str) -> int:
        got = [r["round_trips"] for r in recs if r["kind"] == "engine" and r["scenario"] == scenario
               and r["budget"] == 10_000 and seconds(r)]
        return int(max(got)) if got else b  # unmeasured: one fan-out per pick
    ent = [r for r in engine_rows(recs, "size") if r["scenario"] == "entropy" and seconds(r)]
    per_row_select = None
    if ent:
        big = max(ent, key=lambda r: r["rows"])
        per_row_select = (big["phase_seconds"]["select"] + big["phase_seconds"]["read"]) * big["workers"] / big["rows"]
    out = []
    for g in (8, 16, 64):
        score = n / (g * ASSUME["resnet50_img_per_s_per_gpu"])
        ent_s = (per_row_select or 0) * n / g + ASSUME["rpc_s"] * 3
        kc = b * 2 * (n / g) * e / ASSUME["gpu_flops"] + trips("kcenter") * ASSUME["rpc_s"]
        bd = b * 2 * (n / g) * (e + 1000) / ASSUME["gpu_flops"] + trips("badge") * ASSUME["rpc_s"]
        out.append([str(g), f"{ASSUME['startup_s']:.0f}", f"{score:.0f}", f"{ent_s:.2f}", f"{kc:.2f}", f"{bd:.2f}",
                    f"{ASSUME['startup_s'] + score + kc:.0f}"])
    return out


def per_pick_note(recs: list[dict[str, Any]]) -> str:
    """The CPU cost of an extra k-center pick at 1M rows, from the budget sweep."""
    pts = {r["budget"]: r["phase_seconds"]["select"] for r in recs if r["kind"] == "engine"
           and r["scenario"] == "kcenter" and r["rows"] == 1_000_000 and r["workers"] == 2
           and r["executor"] == "local" and not r.get("options") and seconds(r)}
    if 1_000 in pts and 10_000 in pts:
        ms = (pts[10_000] - pts[1_000]) / 9_000 * 1e3
        return (f"on this CPU an extra k-center pick at 1M rows cost {ms:.1f} ms (all of it: shards and "
                f"coordinator), which would bound it at ~{ms * 10:.0f} s for B = 10,000.")
    return "it was not measured in these runs."


CLUSTER_HEAD = ["GPUs", "start-up s", "ResNet-50 scoring s", "entropy select s", "k-center select s (B=10k)",
                "BADGE select s (B=10k)", "total k-center job s"]


def goals(recs: list[dict[str, Any]]) -> list[list[str]]:
    """The issues' goals, checked against this invocation's runs."""
    def engine(scenario: str, rows: int) -> dict[str, Any] | None:
        for r in recs:
            if (r["kind"] == "engine" and r["scenario"] == scenario and r["rows"] == rows and r["workers"] == 2
                    and r["executor"] == "local" and not r.get("options")
                    and r["budget"] == budget_for(SCENARIOS[scenario], rows) and seconds(r)):
                return r
        return None

    out = []
    for scenario, limit in (("kcenter", 6.0), ("badge", 20.0)):
        r = engine(scenario, 1_000_000)
        if r:
            t = r["phase_seconds"]["select"]
            out.append([f"{scenario} at 1M rows, B = 1,000: select ≤ {limit:g} s", f"{t:.2f} s",
                        "met" if t <= limit else "missed"])
    r = engine("cluster_margin", 1_000_000)
    if r:
        out.append(["cluster_margin: 100k of 1M rows in under a minute", f"{seconds(r):.1f} s",
                    "met" if seconds(r) < 60 else "missed"])
    for rows in (1_000_000, 10_000_000):
        r = engine("entropy", rows)
        if r:
            rate = rows / seconds(r)
            out.append([f"entropy ≥ 500k rows/s ({rows:,} rows, whole job)", f"{rate:,.0f} rows/s",
                        "met" if rate >= 500_000 else "missed"])
    for r in recs:
        if r["kind"] == "peer" and r["peer"] == "batchbald_redux" and r["scenario"] == "batchbald" and seconds(r):
            e = engine("batchbald", r["rows"])
            if e:
                ratio = seconds(r) / e["phase_seconds"]["select"]
                out.append([f"BatchBALD ≥ 20× batchbald_redux ({r['rows']:,} rows, select)", f"{ratio:.1f}×",
                            "met" if ratio >= 20 else "missed"])
    return out


def output_paths(results: str | Path | None, update_docs: bool, markdown: bool = True
                 ) -> tuple[Path, Path | None, str]:
    """Where an invocation writes: (results directory, markdown file or None, the markdown's
    link prefix to the plots).

    By default everything goes to ``out/bench/`` (git-ignored), its tables to
    ``out/bench/BENCHMARKS.md``; ``--results DIR`` chooses another directory. Only
    ``--update-docs`` writes the committed ``benchmarks/results/suite/`` and the repository's
    ``BENCHMARKS.md`` (``--results`` and ``--update-docs`` together are refused: the docs link
    to the committed directory). ``markdown=False`` (``--no-markdown``) writes no markdown.
    """
    if update_docs:
        if results is not None:
            raise SystemExit("alscale bench: --results and --update-docs exclude each other (the committed "
                             "BENCHMARKS.md links to benchmarks/results/suite/)")
        return RESULTS, (ROOT / "BENCHMARKS.md") if markdown else None, "benchmarks/results/suite/"
    out = Path(results).resolve() if results is not None else SCRATCH
    return out, (out / "BENCHMARKS.md") if markdown else None, ""


def write_markdown(recs: list[dict[str, Any]], meta: dict[str, Any], pngs: list[str], quick: bool,
                   link_prefix: str = "benchmarks/results/suite/") -> str:
    cmd = "alscale bench" + (" --quick" if quick else "")
    if meta.get("runs_from"):
        cmd += "` runs, tables rebuilt with `python benchmarks/suite.py --report-only"
    parts = [
        "# alscale benchmarks",
        "",
        f"Generated by `{cmd}` (benchmarks/suite.py) on {meta['date']}, git {meta['git']}. Machine: "
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['machine']['memory_gib']} GiB, no GPU. "
        "Timings on this shared 2-core machine are noisy (each run records the load average in "
        f"`{link_prefix}runs.jsonl`); compare ratios from the same invocation.",
        "",
        "Seconds are a job's phases except Ray start-up (validate, read, score, select, write) for alscale, "
        "and the selection call alone (inputs already in memory) for a peer. Peak MB is the growth of the "
        "measuring process's peak RSS (the driver's, for the Ray executor). Transfers between the "
        "coordinator and the shards are inside `select` (control-plane calls, counted as round trips).",
        "",
        "## Goals",
        "",
        md_table(["goal", "measured", ""], goals(recs)),
        "",
        "## Engine runs",
        "",
        md_table(HEAD, table_rows(recs)),
        "",
    ]
    pr = peer_rows(recs)
    if pr:
        parts += ["## Peers side by side (same pool values)", "",
                  "Peers get the arrays in memory and are timed on their selection call; alscale runs the whole "
                  "job from the pool file (read, select, write), so its column is conservative. small-text's "
                  "k-center runs only with `--slow-peers` (330 s at 20,000 rows here: a full distance pass per "
                  "pick).", "",
                  md_table(PEER_HEAD, pr), ""]
    gr = growth(recs)
    if gr:
        parts += ["## Cost growth (fitted exponents)", "",
                  "Least-squares slope of log time (and log peak memory) against log pool size / budget, "
                  "against the algorithm's expected cost. Small pools are dominated by fixed costs (validation, "
                  "process and file opening), which flattens the fitted exponent below the asymptotic one.", "",
                  md_table(["scenario", "expected cost", "time vs N", "time vs B (1M rows)", "memory vs N"], gr),
                  ""]
    for png in pngs:
        parts += [f"![{png}]({link_prefix}{png})", ""]
    parts += ["## ImageNet on a GPU cluster, on paper", "",
              f"One acquisition over ImageNet-1k train ({IMAGENET['rows']:,} rows, ResNet-50, "
              f"{IMAGENET['emb']}-d embeddings, {IMAGENET['classes']} classes, B = {IMAGENET['budget']:,}), one shard "
              "per GPU. Assumptions: " + "; ".join(f"{k} = {v:g}" for k, v in ASSUME.items()) +
              ". Entropy's selection cost per row is this machine's measured read+select cost. The k-center and "
              "BADGE terms count GPU distance work (the eager upper bound) and the round trips measured here at "
              "B = 10,000, not the coordinator's per-pick work: " + per_pick_note(recs) + " No GPU was available "
              "to check the model; its scoring term dominates and is the assumption to verify first.", "",
              md_table(CLUSTER_HEAD, cluster_model(recs)), ""]
    # Sections other benchmarks write (e.g. benchmarks/selection_objective.py), kept on regeneration.
    for section in sorted((BENCH / "results" / "sections").glob("*.md")):
        parts += [section.read_text().rstrip("\n"), ""]
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="100k rows, few runs: under 3 minutes")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--make-peers", action="store_true", help="create .venv-peers first when it is missing")
    ap.add_argument("--slow-peers", action="store_true", help="also the peers that take minutes (small-text k-center)")
    ap.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="only these scenarios")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run (default 300, quick 120)")
    ap.add_argument("--no-markdown", action="store_true", help="write no BENCHMARKS.md")
    ap.add_argument("--results", metavar="DIR", help="results directory (default: out/bench, git-ignored)")
    ap.add_argument("--update-docs", action="store_true",
                    help="write the committed benchmarks/results/suite/ and BENCHMARKS.md instead of out/bench")
    ap.add_argument("--report-only", action="store_true",
                    help="redo the tables, plots and BENCHMARKS.md from runs.jsonl (no runs): the latest run of "
                         "every configuration")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--peer", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_engine_run(json.loads(args.one))))
        return 0
    if args.peer:
        print(json.dumps(one_peer_run(args.peer[0], json.loads(args.peer[1]))))
        return 0
    sys.path.insert(0, str(ROOT))
    from alscale.runtime import output

    def meta_now(quick: bool) -> dict[str, Any]:
        return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "git": output.git_revision(),
                "machine": machine(), "quick": quick}

    results, md_path, prefix = output_paths(args.results, args.update_docs, not args.no_markdown)
    if args.report_only:
        meta = {**meta_now(False), "runs_from": "runs.jsonl (the latest run of each configuration)"}
        return report(latest_runs(results / "runs.jsonl"), meta, results, md_path, prefix)
    if args.make_peers and not args.no_peers:
        make_peers_venv()
    timeout = args.timeout or (120.0 if args.quick else 300.0)
    runs = plan(args.quick, args.only, not args.no_peers, args.slow_peers)
    results.mkdir(parents=True, exist_ok=True)
    meta = meta_now(args.quick)
    recs = []
    t0 = time.perf_counter()
    with open(results / "runs.jsonl", "a") as log:
        for i, run in enumerate(runs, 1):
            label = run.get("peer", "alscale")
            print(f"[{i}/{len(runs)}] {label} {run['scenario']} rows={run['rows']:,} "
                  f"{run.get('executor', '')} w={run.get('workers', '')} {run.get('options') or ''}", flush=True)
            rec = {**execute(run, timeout), "git": meta["git"], "machine": meta["machine"]}
            t = seconds(rec)
            print(f"    {f'{t:.3f} s' if t is not None else rec.get('error')}", flush=True)
            recs.append(rec)
            log.write(json.dumps(rec) + "\n")
            log.flush()  # a killed suite keeps every finished run
    meta["suite_seconds"] = time.perf_counter() - t0
    (results / "summary.json").write_text(json.dumps({"meta": meta, "runs": recs}, indent=1) + "\n")
    return report(recs, meta, results, md_path, prefix)


def report(recs: list[dict[str, Any]], meta: dict[str, Any], results: Path, md_path: Path | None,
           link_prefix: str) -> int:
    """Plots (in ``results``), printed tables and the markdown (at ``md_path``, unless None)
    from one invocation's runs."""
    results.mkdir(parents=True, exist_ok=True)
    pngs = plots(recs, results)
    md = write_markdown(recs, meta, pngs, meta.get("quick", False), link_prefix)
    print()
    print(md_table(HEAD, table_rows(recs)))
    if peer_rows(recs):
        print()
        print(md_table(PEER_HEAD, peer_rows(recs)))
    print(f"\nsuite: {len(recs)} runs in {meta.get('suite_seconds', 0):.0f} s; results in {results}")
    if md_path is not None:
        md_path.write_text(md + "\n")
        print(f"wrote {md_path}")
    if results != RESULTS:
        print("(the committed BENCHMARKS.md and benchmarks/results/suite/ are updated only with --update-docs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
