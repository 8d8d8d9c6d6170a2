"""Neighbour-layer benchmark (issue 16): speed and quality of approximation, one table.

    .venv/bin/python benchmarks/neighbours.py [--parts recall,probcover,...] [--old-probcover]

Parts (each prints rows of the table and adds to ``benchmarks/results/neighbours.json``):

- ``recall``: recall@10 of each approximate index against exact search at 100k rows
  (E = 32, 2,000 queries), with build and search seconds;
- ``probcover``: ProbCover B = 100 — exact at 20k / 100k (and, with ``--old-probcover``,
  the all-pairs construction it replaces, in the same run), ``probcover_approx`` at 100k /
  1M; coverage of the approximate picks against the exact ones at 100k (same δ, fraction of
  the pool within δ of a pick);
- ``seals``: SEALS k = 10 with a kept index at 100k / 1M rows, 50,000 (1M) / 5,000 (100k)
  labelled: round 1 builds the structure, round 2 adds 1,000 labels; seconds of the SEALS
  step, and the candidate overlap of an approximate (HNSW) round against exact;
- ``typiclust``: TypiClust B = 100 at 100k / 1M;
- ``dedup``: planted near-duplicates (1% of rows copied with noise 1e-3) at 100k / 1M, E = 32:
  recall of the planted pairs, seconds.

Pools are ``benchmarks/suite.py``'s synthetic ones (``data/bench``). Every row records the
load average; timings on this shared 2-core machine are noisy, so compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = Path(os.environ.get("NEIGHBOURS_RESULTS", ROOT / "benchmarks" / "results" / "neighbours.json"))
#: Sizes of each part (override with NEIGHBOURS_ROWS=100000,1000000).
SIZES = [int(v) for v in os.environ.get("NEIGHBOURS_ROWS", "100000,1000000").split(",")]

ROWS: list[dict[str, Any]] = []


def record(**row: Any) -> None:
    row["load"] = round(os.getloadavg()[0], 1)
    ROWS.append(row)
    print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    save()


def save() -> None:
    from alscale.runtime.output import git_revision

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"git_revision": git_revision(), "machine": os.uname().machine,
                                   "cpus": os.cpu_count(), "rows": ROWS}, indent=1))


def embeddings(rows: int) -> np.ndarray:
    import suite

    from alscale.pool import read_shard
    from alscale.types import ShardSpec

    path = suite.ensure_pool(suite.SCENARIOS["probcover"], rows)
    return np.asarray(read_shard(ShardSpec(str(path), 0, 0, rows), ["embedding"]).embeddings_N_D, np.float32)


def shards_of(x: np.ndarray, n_shards: int = 2, labeled: np.ndarray | None = None):
    from alscale.strategies import FanoutShards, InProcessFanout, ShardState

    b = np.linspace(0, x.shape[0], n_shards + 1).astype(int)
    sh = FanoutShards(InProcessFanout([ShardState(np.arange(b[s], b[s + 1]), None, x[b[s]:b[s + 1]])
                                       for s in range(n_shards)]))
    if labeled is not None:
        sh.exclude(labeled)
    return sh


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


# -- parts --------------------------------------------------------------------------------------

def part_recall() -> None:
    from alscale.index.neighbours import make_index

    x = embeddings(100_000)
    q = x[np.random.default_rng(0).choice(x.shape[0], 2000, replace=False)]
    ids = np.arange(x.shape[0])
    ex, tb = timed(make_index, "exact", x, ids)
    (_, ref), ts = timed(ex.search, q, 10)
    record(part="recall", index="exact", rows=100_000, build_s=round(tb, 2), search_s=round(ts, 2), recall_at_10=1.0)
    for mode, params in (("approx_ivf_flat", {}), ("approx_ivf_flat", {"nprobe": 32}), ("approx_ivf_pq", {}),
                         ("approx_hnsw", {}), ("approx_hnsw", {"ef_search": 256})):
        ix, tb = timed(make_index, mode, x, ids, params=params)
        (_, got), ts = timed(ix.search, q, 10)
        rec = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), ref.tolist())]))
        record(part="recall", index=mode, params=params, rows=100_000, build_s=round(tb, 2), search_s=round(ts, 2),
               recall_at_10=round(rec, 4))


def _coverage(xn: np.ndarray, picks: np.ndarray, delta: float) -> float:
    from alscale.index.neighbours import make_index

    ix = make_index("exact", xn, np.arange(xn.shape[0]))
    lims, _, nb = ix.range_search(xn[picks], delta * delta)
    return float(np.unique(nb).shape[0] / xn.shape[0])


def part_probcover(old: bool) -> None:
    from alscale.strategies import run_strategy
    from alscale.strategies.neighbour_ops import normalized
    from alscale.strategies.probcover import select_probcover_allpairs
    from alscale.strategies.registry import check_options

    for rows in [r for r in (20_000, 100_000) if r in SIZES or r == 20_000]:
        x = embeddings(rows)
        sel, t = timed(run_strategy, shards_of(x), "probcover", 100, options={}, seed=0)
        record(part="probcover", mode="probcover (exact)", rows=rows, select_s=round(t, 2))
        if old:
            ref, t_old = timed(select_probcover_allpairs, shards_of(x), 100, options=check_options("probcover", {}),
                               seed=0)
            record(part="probcover", mode="all-pairs (before)", rows=rows, select_s=round(t_old, 2),
                   speedup=round(t_old / t, 1), same_picks=bool(np.array_equal(ref.indices, sel.indices)))
    # δ of the exact run at 100k, for a like-for-like coverage comparison
    x = embeddings(100_000)
    from alscale.strategies import probcover_graph as pcg

    sh = shards_of(x)
    sh.call(pcg._OP + "pcg_index", "exact", {}, True, 0)
    delta = pcg.purity_delta(sh, n_classes=10, purity=0.95, normalize=True, chunk_rows=8192, seed=0, round=0,
                             kmeans_iters=100)
    xn = normalized(x)
    ex = run_strategy(shards_of(x), "probcover", 100, options={"delta": delta}, seed=0)
    ap, t = timed(run_strategy, shards_of(x), "probcover_approx", 100, options={"delta": delta}, seed=0)
    ap_auto, t_auto = timed(run_strategy, shards_of(x), "probcover_approx", 100, options={}, seed=0)
    c_ex, c_ap = _coverage(xn, ex.indices, delta), _coverage(xn, ap.indices, delta)
    c_auto = _coverage(xn, ap_auto.indices, delta)
    record(part="probcover", mode="coverage at 100k", rows=100_000, delta=round(delta, 5), exact_coverage=round(c_ex, 5),
           approx_coverage=round(c_ap, 5), approx_auto_delta_coverage=round(c_auto, 5),
           loss_pct=round(100 * (c_ex - c_ap) / c_ex, 2), loss_auto_pct=round(100 * (c_ex - c_auto) / c_ex, 2),
           batch_overlap=len(set(ex.indices.tolist()) & set(ap.indices.tolist())))
    record(part="probcover", mode="probcover_approx", rows=100_000, select_s=round(t_auto, 2))
    x = embeddings(1_000_000)
    sel, t = timed(run_strategy, shards_of(x), "probcover_approx", 100, options={}, seed=0)
    record(part="probcover", mode="probcover_approx", rows=1_000_000, select_s=round(t, 2), picks=len(sel))


def part_seals() -> None:
    from alscale.runtime.seals_store import apply_seals_kept
    from alscale.strategies.seals_kept import seals_with_kept

    n_lab_of = {100_000: 5_000, 1_000_000: int(os.environ.get("NEIGHBOURS_SEALS_LABELED", 50_000))}
    for rows, n_lab in ((r, n_lab_of.get(r, r // 20)) for r in SIZES):
        x = embeddings(rows)
        rng = np.random.default_rng(0)
        lab = np.sort(rng.choice(rows, n_lab, replace=False))
        with tempfile.TemporaryDirectory() as d:
            (n1, info1), t1 = timed(apply_seals_kept, shards_of(x, 2, lab), 10, d, "exact")
            new = np.setdiff1d(rng.choice(rows, 1200, replace=False), lab)[:1000]
            lab2 = np.concatenate([lab, new])
            (n2, info2), t2 = timed(apply_seals_kept, shards_of(x, 2, lab2), 10, d, "exact")
        record(part="seals", rows=rows, labeled=n_lab, round1_s=round(t1, 2), round2_s=round(t2, 2),
               round2_searched=info2["searched"], round2_reused=info2["reused"], candidates=n2)
        if rows == 100_000:
            ex, _, _ = seals_with_kept(shards_of(x, 2, lab), 10, None, mode="exact")
            for mode in ("approx_hnsw", "approx_ivf_flat"):
                (ap, _, _), t = timed(seals_with_kept, shards_of(x, 2, lab), 10, None, mode=mode)
                record(part="seals", rows=rows, labeled=n_lab, mode=mode, seconds=round(t, 2),
                       candidate_overlap=round(len(np.intersect1d(ex, ap)) / len(ex), 4))


def part_typiclust() -> None:
    from alscale.strategies import run_strategy

    for rows in SIZES:
        x = embeddings(rows)
        sel, t = timed(run_strategy, shards_of(x), "typiclust", 100, options={}, seed=0)
        record(part="typiclust", rows=rows, select_s=round(t, 2), picks=len(sel))


def part_dedup() -> None:
    from alscale.strategies.dedup import near_duplicates

    for rows in SIZES:
        x = embeddings(rows).copy()
        rng = np.random.default_rng(1)
        k = rows // 100
        src = rng.choice(rows // 2, k, replace=False)
        dst = rows // 2 + rng.choice(rows // 2, k, replace=False)
        x[dst] = x[src] + rng.standard_normal((k, x.shape[1])).astype(np.float32) * 1e-3
        # threshold: far above the plants' distance (~6e-3), below the pool's nearest-neighbour scale
        for mode in ("exact", "approx_ivf_flat"):
            res, t = timed(near_duplicates, shards_of(x), 0.02, mode=mode)
            pos = np.argsort(res.row_ids_N)
            g = res.group_N[pos]
            recall = float(np.mean(g[src] == g[dst]))
            record(part="dedup", rows=rows, mode=mode, threshold=0.02, seconds=round(t, 2), planted=k,
                   recall=round(recall, 4), groups=int((~res.keep_N).sum()))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as one Markdown table per part."""
    out = []
    for part in dict.fromkeys(r["part"] for r in rows):
        these = [r for r in rows if r["part"] == part]
        cols = list(dict.fromkeys(k for r in these for k in r if k != "part"))
        out.append(f"**{part}**\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in these:
            out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true", help="print the stored results as Markdown and exit")
    ap.add_argument("--parts", default="recall,probcover,seals,typiclust,dedup")
    ap.add_argument("--old-probcover", action="store_true", help="also the all-pairs ProbCover (258 s at 100k)")
    args = ap.parse_args()
    if args.report:
        print(markdown(json.loads(RESULTS.read_text())["rows"]))
        return
    if RESULTS.exists():
        ROWS.extend(r for r in json.loads(RESULTS.read_text()).get("rows", [])
                    if r.get("part") not in args.parts.split(","))
    for part in args.parts.split(","):
        print(f"== {part}", flush=True)
        if part == "probcover":
            part_probcover(args.old_probcover)
        else:
            globals()[f"part_{part}"]()
    save()


if __name__ == "__main__":
    main()
