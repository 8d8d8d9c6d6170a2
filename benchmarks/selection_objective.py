"""The composed selection (``selection:``, strategy ``objective``) at a million rows: the seconds
of each component, local and Ray, 1/2/7 shards, with the plain strategies it composes as peers
in the same invocation.

The job is ``jobs/selection_1m.yaml`` (two filter rules, entropy + margin + a quality column
weighted, at least 50 and at most 200 picks per predicted class, k-center diversity), B = 1,000,
on a synthetic pool (``alscale pool synth ... --log-probs 1 --embedding-dim 32 --metadata``)
with 1,000 labelled rows (every 1,000th: k-center's initial centers). Each run is
``alscale run`` in a subprocess; the manifest gives the phases, the selection's stage seconds
(``selection.seconds``) and round trips. Peers, same pool and labelled rows: ``entropy`` (top-k),
``kcenter`` (Core-Set), and the objective without diversity, with a distance threshold, and with
BADGE over a 10,000-row shortlist.

    python benchmarks/selection_objective.py [--rows 1000000] [--quick] [--update-docs]

Writes ``benchmarks/results/selection_objective.jsonl`` (one line per run, with the load
average) and ``benchmarks/results/sections/selection_objective.md``; ``--update-docs`` also puts
the table in BENCHMARKS.md (between its markers; ``benchmarks/suite.py --report-only`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from doc_sections import save_section, splice_into_benchmarks_md  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("scores", "filters", "normalize", "shortlist", "constraints", "diversity", "provenance")
START, END = "<!-- selection_objective:start -->", "<!-- selection_objective:end -->"


def make_pool(rows: int) -> tuple[Path, Path]:
    from alscale.pool import synth_pool

    data = ROOT / "data" / "bench"
    data.mkdir(parents=True, exist_ok=True)
    pool = data / f"selection-{rows}.arrow"
    if not pool.exists():
        synth_pool(str(pool), rows=rows, dim=32, classes=10, seed=0, log_probs_samples=1, embedding_dim=32,
                   metadata=True)
    labeled = data / f"selection-{rows}-labeled.csv"
    if not labeled.exists():
        step = max(1, rows // 1000)
        labeled.write_text("row_id\n" + "\n".join(str(r) for r in range(0, rows, step)) + "\n")
    return pool, labeled


def runs(budget: int) -> list[tuple[str, str, int, dict]]:
    """(name, executor, shards, job overrides as a mapping) of every run."""
    job = yaml.safe_load((ROOT / "jobs" / "selection_1m.yaml").read_text())
    sel = {**job["selection"], "budget": budget}
    out = [("objective", ex, sh, {"selection": sel}) for ex, sh in
           (("local", 2), ("local", 1), ("local", 7), ("ray", 2), ("ray", 7))]
    out += [
        ("entropy", "local", 2, {"strategy": {"name": "entropy", "budget": budget}}),
        ("kcenter", "local", 2, {"strategy": {"name": "kcenter", "budget": budget, "embedding": "column"}}),
        ("objective, no diversity", "local", 2, {"selection": {**sel, "diversity": {"kind": "none"}}}),
        ("objective, threshold r=1.5", "local", 2,
         {"selection": {**sel, "diversity": {"kind": "threshold", "radius": 1.5}}}),
        ("objective, BADGE on 10k shortlist", "local", 2,
         {"selection": {**sel, "diversity": {"kind": "badge", "shortlist": 10 * budget}}}),
    ]
    return out


def run_one(name: str, executor: str, shards: int, over: dict, pool: Path, labeled: Path, out: Path) -> dict:
    job = {"pool": {"path": str(pool)}, "labeled": {"path": str(labeled)}, "model": None, "seed": 0,
           "runtime": {"executor": executor, "shards": shards}, **over}
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.yaml").write_text("# benchmark job (benchmarks/selection_objective.py)\n" + yaml.safe_dump(job))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "alscale.cli", "run", str(out / "job.yaml"), "--out",
                           str(out / "run"), "--force", "--no-progress"], capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"name": name, "executor": executor, "shards": shards, "error": proc.stderr.strip()[-500:]}
    m = json.loads((out / "run" / "manifest.json").read_text())
    sel = m.get("selection") or {}
    import pyarrow.parquet as pq

    return {"benchmark": "selection_objective", "name": name, "executor": executor, "shards": shards,
            "rows": m["pool"]["n_rows"], "budget": m["budget"], "n_selected": m["n_selected"], "wall_s": wall,
            "phase_seconds": m["phase_seconds"], "stage_seconds": sel.get("seconds"),
            "round_trips": m["round_trips"], "rounds": (sel.get("diversity") or {}).get("rounds"),
            "candidates": sel.get("candidates"), "picks": pq.read_table(out / "run" / "selection.parquet",
                                                                        columns=["row_id"])["row_id"].to_pylist(),
            "hash_seconds": (m.get("inputs") or {}).get("hash_seconds"), "load_avg": os.getloadavg(),
            "git": m.get("git_revision"), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def table(recs: list[dict]) -> list[list[str]]:
    ref = next(r for r in recs if r["name"] == "objective" and "picks" in r)["picks"]
    rows = []
    for r in recs:
        if "error" in r:
            rows.append([r["name"], r["executor"], str(r["shards"]), "error: " + r["error"][:80]] + [""] * 11)
            continue
        st = r["stage_seconds"] or {}
        same = "yes" if r["picks"] == ref else ("-" if r["name"] != "objective" else "NO")
        rows.append([r["name"], r["executor"], str(r["shards"]), f"{r['phase_seconds']['select']:.2f}",
                     *[f"{st[k]:.2f}" if k in st else "" for k in STAGES], f"{r['phase_seconds']['read']:.2f}",
                     str(r["round_trips"]), same, f"{r['load_avg'][0]:.1f}"])
    return rows


HEAD = ["run", "executor", "shards", "select s", *STAGES, "read s", "round trips", "same picks", "load"]


def markdown(recs: list[dict], cmd: str) -> str:
    lines = [f"| {' | '.join(HEAD)} |", "|" + "---|" * len(HEAD)]
    lines += [f"| {' | '.join(r)} |" for r in table(recs)]
    ok = [r for r in recs if "error" not in r]
    first = ok[0]
    sel = {r["name"]: r["phase_seconds"]["select"] for r in ok if r["executor"] == "local" and r["shards"] == 2}
    ratio = ", ".join(f"{sel['objective'] / v:.1f}× {k}" for k, v in sel.items() if k != "objective" and v > 0)
    cand = first.get("candidates") or {}
    return "\n".join([
        START, "", f"## Selection as one objective at {first['rows']:,} rows (`benchmarks/selection_objective.py`)", "",
        f"`{cmd}` on {first['time_utc'][:10]}, git {first['git']}, {first['rows']:,} rows, B = {first['budget']:,}, "
        "1,000 labelled rows. The job is `jobs/selection_1m.yaml` (two filter rules, entropy + margin + quality "
        "weighted, 50–200 picks per predicted class, k-center diversity); each run is `alscale run` in a "
        f"subprocess. Filters kept {cand.get('after_filters', 0):,} of {cand.get('before_filters', 0):,} "
        "candidates. Stage columns are `selection.seconds` of the manifest (wall seconds on the coordinator, "
        "fan-outs included; `constraints` is the quota bookkeeping between the greedy's phases, `diversity` the "
        "greedy itself). \"same picks\": the selection equals the local 2-shard run's, row for row. The load "
        "average of the shared 2-core machine is in the last column: compare ratios within the table.", "",
        *lines, "",
        f"The objective's select phase (local, 2 shards) took {ratio} (the peers' select phases, same pool).",
        "", END])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="100,000 rows")
    ap.add_argument("--only", nargs="*", help="only the runs whose name starts with one of these")
    ap.add_argument("--update-docs", action="store_true", help="also write the table into BENCHMARKS.md")
    args = ap.parse_args()
    rows = 100_000 if args.quick else args.rows
    pool, labeled = make_pool(rows)
    recs = []
    scratch = ROOT / "out" / "bench" / "selection_objective"
    for i, (name, executor, shards, over) in enumerate(runs(args.budget)):
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        rec = run_one(name, executor, shards, over, pool, labeled, scratch / f"run-{i}")
        recs.append(rec)
        print(f"{name:36s} {executor:5s} {shards} shards: " + (rec.get("error") or
              f"select {rec['phase_seconds']['select']:.2f} s, stages {rec['stage_seconds']}"), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "selection_objective.jsonl", "a") as fh:
        for r in recs:
            fh.write(json.dumps({k: v for k, v in r.items() if k != "picks"}) + "\n")
    cmd = "python benchmarks/selection_objective.py" + (" --quick" if args.quick else "")
    md = markdown(recs, cmd)
    save_section("selection_objective", md)
    print(md)
    if args.update_docs:
        splice_into_benchmarks_md(md, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
