"""Neighbour-layer benchmark (issue 16): speed and quality of approximation, peers side by
side, growth exponents — one table.

    .venv/bin/python benchmarks/neighbours.py --parts goals          # every goal number, one run
    .venv/bin/python benchmarks/neighbours.py --parts recall,knn,...  # chosen parts
    .venv/bin/python benchmarks/neighbours.py --report                # the stored rows as Markdown

Parts (each prints rows of the table and adds to ``benchmarks/results/neighbours.json``;
``goals`` = ``knn,probcover,seals,typiclust,growth``):

- ``recall``: recall@10 of each approximate index against exact search at 100k rows
  (E = 32, 2,000 queries), with build and search seconds;
- ``knn``: exact k-NN with Voronoi-cell pruning against the brute-force pass, same process:
  1,000 and 20,000 queries (k = 20) at 1M rows, same answers;
- ``probcover``: ProbCover B = 100 — exact at 100k, ``probcover_approx`` at 100k / 1M,
  coverage of the approximate picks against the exact ones at 100k (the exact δ; fraction of
  the pool within δ of a pick); scikit-activeml's ProbCover at 20k beside exact at 20k;
- ``probcover_exact_1m``: exact ProbCover at 1M rows;
- ``seals``: SEALS k = 10 with a kept index at 100k / 1M rows, N/20 labelled: round 1 builds
  the structure, round 2 adds 1,000 labels; round 2's candidates against a from-scratch
  exact SEALS of round 2's labelled set; candidate overlap of HNSW / IVF-Flat at 100k;
- ``typiclust``: TypiClust B = 100 at 20k / 100k / 1M, scikit-activeml's TypiClust beside
  it on the same pools; the mean typicality of each side's picks (alscale's definition);
  ``typiclust_10m``: alscale at 10M rows (tens of minutes; a 2.2 GB pool);
- ``growth``: fitted exponents ``t ∝ N^b`` over three sizes in this run — ProbCover exact
  (20k, 50k, 100k), ``probcover_approx`` (100k, 300k, 1M), SEALS round 2 (100k, 300k, 1M,
  N/20 labelled, 1,000 new labels), TypiClust (100k, 300k, 1M);
- ``before_after`` (``--base DIR``, a tree of the code before, e.g. ``git archive main``
  unpacked): k-means (1M rows, K = 100), TypiClust 1M and SEALS round 2 at 1M under that
  tree and this one, each in a fresh process, with whether the answers are identical;
- ``dedup``: planted near-duplicates (1% of rows copied with noise 1e-3) at 100k / 1M, E = 32:
  recall of the planted pairs, seconds.

Pools are ``benchmarks/suite.py``'s synthetic ones (``data/bench``; their embeddings lie in
an 8-dimensional subspace of E = 32). Shards are two in-process shards. Every row records
the 1-minute load average, the wall seconds and the process CPU seconds (all threads; with
``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` a stable measure of work on a loaded machine),
and the process's peak RSS so far. Timings on this shared 2-core machine are noisy: compare
within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from doc_sections import save_section, splice_into_benchmarks_md  # noqa: E402

RESULTS = Path(os.environ.get("NEIGHBOURS_RESULTS", ROOT / "benchmarks" / "results" / "neighbours.json"))
GOALS = "knn,probcover,seals,typiclust,growth"

ROWS: list[dict[str, Any]] = []


def record(**row: Any) -> dict[str, Any]:
    row["load"] = round(os.getloadavg()[0], 1)
    row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    ROWS.append(row)
    print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    save()
    return row


def save() -> None:
    from alscale.runtime.output import git_revision

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"git_revision": git_revision(), "machine": os.uname().machine,
                                   "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS", "all"),
                                   "rows": ROWS}, indent=1))


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


class Timed:
    """``with Timed() as t: ...`` then ``t.wall``, ``t.cpu`` (process CPU seconds, all threads)."""

    def __enter__(self) -> Timed:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = round(time.perf_counter() - self._w, 2)
        self.cpu = round(time.process_time() - self._c, 2)


def fit_exponent(sizes: list[int], seconds: list[float]) -> float:
    """``b`` of the least-squares fit ``log t = a + b log N``."""
    return round(float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0]), 2)


def peer(strategy: str, rows: int, timeout: float = 3600) -> dict[str, Any]:
    """scikit-activeml's ``strategy`` on the same pool, in the peers' interpreter."""
    import suite

    if not suite.PEERS_PYTHON.exists():
        return {"error": "no .venv-peers (run `make peers`)"}
    s = suite.SCENARIOS[strategy]
    cfg = {"scenario": strategy, "budget": 100, "npy": suite.ensure_npy(s, rows), "labeled_ids": []}
    return suite.spawn(["--peer", "scikit-activeml", json.dumps(cfg)], suite.PEERS_PYTHON, timeout)


# -- parts --------------------------------------------------------------------------------------

def part_recall() -> None:
    from alscale.index.neighbours import make_index

    x = embeddings(100_000)
    q = x[np.random.default_rng(0).choice(x.shape[0], 2000, replace=False)]
    ids = np.arange(x.shape[0])
    with Timed() as tb:
        ex = make_index("exact", x, ids)
    with Timed() as ts:
        _, ref = ex.search(q, 10)
    record(part="recall", index="exact", rows=100_000, build_s=tb.wall, search_s=ts.wall, recall_at_10=1.0)
    for mode, params in (("approx_ivf_flat", {}), ("approx_ivf_flat", {"nprobe": 32}), ("approx_ivf_pq", {}),
                         ("approx_hnsw", {}), ("approx_hnsw", {"ef_search": 256})):
        with Timed() as tb:
            ix = make_index(mode, x, ids, params=params)
        with Timed() as ts:
            _, got = ix.search(q, 10)
        rec = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), ref.tolist())]))
        record(part="recall", index=mode, params=params, rows=100_000, build_s=tb.wall, search_s=ts.wall,
               recall_at_10=round(rec, 4))


def part_knn() -> None:
    """Cell-pruned exact k-NN against brute force, same queries, same process."""
    from alscale.index.neighbours import make_index

    x = embeddings(1_000_000)
    ids = np.arange(x.shape[0])
    for nq in (1_000, 20_000):
        q = x[np.random.default_rng(1).choice(x.shape[0], nq, replace=False)]
        out = {}
        for cells in (True, False):
            with Timed() as t:
                ix = make_index("exact", x, ids, params={"cells": cells, "queries": nq})
                _, i = _search_all(ix, q, 20)
            out[cells] = (t, i, ix)
        same = bool(np.array_equal(out[True][1], out[False][1]))
        cells = out[True][2].cells()
        record(part="knn", rows=1_000_000, queries=nq, k=20, cells_s=out[True][0].wall, cells_cpu_s=out[True][0].cpu,
               brute_s=out[False][0].wall, brute_cpu_s=out[False][0].cpu, nlist=cells.nlist,
               scanned=round(cells.scan_fraction(), 4), same_answer=same)


def _search_all(ix: Any, q: np.ndarray, k: int, step: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    parts = [ix.search(q[s:s + step], k) for s in range(0, q.shape[0], step)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _coverage(xn: np.ndarray, picks: np.ndarray, delta: float) -> float:
    from alscale.index.neighbours import make_index

    ix = make_index("exact", xn, np.arange(xn.shape[0]))
    _, _, nb = ix.range_search(xn[picks], delta * delta)
    return float(np.unique(nb).shape[0] / xn.shape[0])


def _run(x: np.ndarray, name: str, options: dict[str, Any] | None = None) -> tuple[Any, Timed]:
    from alscale.strategies import run_strategy

    sh = shards_of(x)
    with Timed() as t:
        sel = run_strategy(sh, name, 100, options=dict(options or {}), seed=0)
    return sel, t


def part_probcover() -> None:
    from alscale.strategies import probcover_graph as pcg
    from alscale.strategies.neighbour_ops import normalized

    x = embeddings(20_000)
    sel, t = _run(x, "probcover")
    p = peer("probcover", 20_000)
    record(part="probcover", mode="probcover (exact) vs scikit-activeml ProbCover", rows=20_000, select_s=t.wall,
           cpu_s=t.cpu, peer_s=round(p.get("select_s", float("nan")), 2), peer_error=p.get("error"),
           peer_peak_mb=round(p.get("peak_growth_mb", float("nan"))), speedup=round(p.get("select_s", 0) / t.wall, 1))
    x = embeddings(100_000)
    sh = shards_of(x)
    delta = pcg.purity_delta(sh, n_classes=10, purity=0.95, normalize=True, chunk_rows=8192, seed=0, round=0,
                             kmeans_iters=100)
    ex, t_ex = _run(x, "probcover")
    record(part="probcover", mode="probcover (exact)", rows=100_000, select_s=t_ex.wall, cpu_s=t_ex.cpu)
    ap, _ = _run(x, "probcover_approx", {"delta": delta})
    ap_auto, t = _run(x, "probcover_approx")
    record(part="probcover", mode="probcover_approx", rows=100_000, select_s=t.wall, cpu_s=t.cpu)
    xn = normalized(x)
    c_ex, c_ap, c_auto = (_coverage(xn, s.indices, delta) for s in (ex, ap, ap_auto))
    record(part="probcover", mode="coverage at 100k", rows=100_000, delta=round(delta, 5),
           exact_coverage=round(c_ex, 5), approx_coverage=round(c_ap, 5), approx_auto_delta_coverage=round(c_auto, 5),
           loss_pct=round(100 * (c_ex - c_ap) / c_ex, 2), loss_auto_pct=round(100 * (c_ex - c_auto) / c_ex, 2),
           batch_overlap=len(set(ex.indices.tolist()) & set(ap.indices.tolist())))
    sel, t = _run(embeddings(1_000_000), "probcover_approx")
    record(part="probcover", mode="probcover_approx", rows=1_000_000, select_s=t.wall, cpu_s=t.cpu, picks=len(sel),
           goal_s=300, met=t.wall <= 300)


def part_probcover_exact_1m() -> None:
    """Exact ProbCover (the all-pairs construction's δ, graph and picks) at 1M rows."""
    sel, t = _run(embeddings(1_000_000), "probcover")
    record(part="probcover", mode="probcover (exact)", rows=1_000_000, select_s=t.wall, cpu_s=t.cpu, picks=len(sel))


def _seals_rounds(rows: int) -> dict[str, Any]:
    """Round 1 (L = N/20 labelled) and round 2 (+1,000 labels) with a kept index."""
    from alscale.runtime.seals_store import apply_seals_kept

    x = embeddings(rows)
    rng = np.random.default_rng(0)
    lab = np.sort(rng.choice(rows, rows // 20, replace=False))
    lab2 = np.concatenate([lab, np.setdiff1d(rng.choice(rows, 1200, replace=False), lab)[:1000]])
    with tempfile.TemporaryDirectory() as d:
        sh1, sh2 = shards_of(x, 2, lab), shards_of(x, 2, lab2)
        with Timed() as t1:
            apply_seals_kept(sh1, 10, d, "exact")
        with Timed() as t2:
            n2, info2 = apply_seals_kept(sh2, 10, d, "exact")
    return {"x": x, "lab": lab, "lab2": lab2, "t1": t1, "t2": t2, "n2": n2, "info2": info2}


def part_seals() -> None:
    from alscale.strategies.seals import seals_candidates
    from alscale.strategies.seals_kept import candidates_sha256, seals_with_kept

    for rows in (100_000, 1_000_000):
        r = _seals_rounds(rows)
        with Timed() as t:
            ref = seals_candidates(shards_of(r["x"], 2, r["lab2"]), 10)
        record(part="seals", rows=rows, labeled=r["lab"].shape[0], round1_s=r["t1"].wall, round1_cpu_s=r["t1"].cpu,
               round2_s=r["t2"].wall, round2_cpu_s=r["t2"].cpu, round2_searched=r["info2"]["searched"],
               round2_reused=r["info2"]["reused"], candidates=r["n2"], from_scratch_s=t.wall,
               identical_to_exact=candidates_sha256(ref) == r["info2"]["candidates_sha256"],
               goal_s=5 if rows == 1_000_000 else None)
        if rows == 100_000:
            ex, _, _ = seals_with_kept(shards_of(r["x"], 2, r["lab"]), 10, None, mode="exact")
            for mode in ("approx_hnsw", "approx_ivf_flat"):
                with Timed() as t:
                    ap, _, _ = seals_with_kept(shards_of(r["x"], 2, r["lab"]), 10, None, mode=mode)
                record(part="seals", rows=rows, labeled=r["lab"].shape[0], mode=mode, seconds=t.wall,
                       candidate_overlap=round(len(np.intersect1d(ex, ap)) / len(ex), 4))


def _mean_typicality(x: np.ndarray, picks: np.ndarray, knn: int = 20) -> float:
    """Mean over the picks of TypiClust's typicality among all rows (1 / mean kNN distance)."""
    from alscale.index.neighbours import make_index

    ix = make_index("exact", x, np.arange(x.shape[0]))
    d2, _ = ix.search(x[picks], knn, exclude_ids_Q=np.asarray(picks))
    return float(np.mean(1.0 / (np.sqrt(d2).mean(axis=1) + 1e-5)))


def part_typiclust(sizes: tuple[int, ...] = (20_000, 100_000, 1_000_000)) -> None:
    for rows in sizes:
        x = embeddings(rows)
        sel, t = _run(x, "typiclust")
        row: dict[str, Any] = {"rows": rows, "select_s": t.wall, "cpu_s": t.cpu, "picks": len(sel),
                               "typicality": round(_mean_typicality(x, sel.indices), 3)}
        if rows <= 1_000_000:
            p = peer("typiclust", rows)
            row.update(peer_s=round(p.get("select_s", float("nan")), 2), peer_error=p.get("error"),
                       peer_peak_mb=round(p.get("peak_growth_mb", float("nan"))))
            if "picks" in p:
                row["peer_typicality"] = round(_mean_typicality(x, np.asarray(p["picks"], np.int64)), 3)
        if rows == 1_000_000:
            row.update(goal_s=30)
        del x
        record(part="typiclust", **row)


def part_growth() -> None:
    """Exponents over three sizes, each run now."""
    for name, sizes in (("probcover", (20_000, 50_000, 100_000)),
                        ("probcover_approx", (100_000, 300_000, 1_000_000)),
                        ("typiclust", (100_000, 300_000, 1_000_000))):
        secs, cpus = [], []
        for rows in sizes:
            _, t = _run(embeddings(rows), name)
            secs.append(t.wall)
            cpus.append(t.cpu)
            record(part="growth", strategy=name, rows=rows, select_s=t.wall, cpu_s=t.cpu)
        record(part="growth", strategy=name, sizes=list(sizes), exponent_wall=fit_exponent(list(sizes), secs),
               exponent_cpu=fit_exponent(list(sizes), cpus))
    sizes, secs, cpus = (100_000, 300_000, 1_000_000), [], []
    for rows in sizes:
        r = _seals_rounds(rows)
        secs.append(r["t2"].wall)
        cpus.append(r["t2"].cpu)
        record(part="growth", strategy="seals round 2 (+1,000 labels)", rows=rows, labeled=rows // 20,
               select_s=r["t2"].wall, cpu_s=r["t2"].cpu)
    record(part="growth", strategy="seals round 2 (+1,000 labels)", sizes=list(sizes),
           exponent_wall=fit_exponent(list(sizes), secs), exponent_cpu=fit_exponent(list(sizes), cpus))


def part_dedup() -> None:
    from alscale.strategies.dedup import near_duplicates

    for rows in (100_000, 1_000_000):
        x = embeddings(rows).copy()
        rng = np.random.default_rng(1)
        k = rows // 100
        src = rng.choice(rows // 2, k, replace=False)
        dst = rows // 2 + rng.choice(rows // 2, k, replace=False)
        x[dst] = x[src] + rng.standard_normal((k, x.shape[1])).astype(np.float32) * 1e-3
        # threshold: far above the plants' distance (~6e-3), below the pool's nearest-neighbour scale
        for mode in ("exact", "approx_ivf_flat"):
            with Timed() as t:
                res = near_duplicates(shards_of(x), 0.02, mode=mode)
            pos = np.argsort(res.row_ids_N)
            g = res.group_N[pos]
            record(part="dedup", rows=rows, mode=mode, threshold=0.02, seconds=t.wall, cpu_s=t.cpu, planted=k,
                   recall=round(float(np.mean(g[src] == g[dst])), 4), groups=int((~res.keep_N).sum()))


# -- before / after: the same case under another tree (e.g. `git archive main`), same session --

def _case(name: str) -> dict[str, Any]:
    """One timed case in this process (run by :func:`part_before_after` under each tree)."""
    import hashlib

    x = embeddings(1_000_000)
    if name == "typiclust_1m":
        sel, t = _run(x, "typiclust")
        out = sel.indices
    elif name == "kmeans_1m_k100":
        from alscale.strategies.clustering import kmeans

        with Timed() as t:
            out = kmeans(shards_of(x), 100, seed=0, round=0)["centers"]
    else:  # seals_1m_round2: 50,000 labelled, then 1,000 more, kept index
        from alscale.runtime.seals_store import apply_seals_kept

        rng = np.random.default_rng(0)
        lab = np.sort(rng.choice(x.shape[0], 50_000, replace=False))
        lab2 = np.concatenate([lab, np.setdiff1d(rng.choice(x.shape[0], 1200, replace=False), lab)[:1000]])
        with tempfile.TemporaryDirectory() as d:
            apply_seals_kept(shards_of(x, 2, lab), 10, d, "exact")
            sh = shards_of(x, 2, lab2)
            with Timed() as t:
                _, info = apply_seals_kept(sh, 10, d, "exact")
        out = np.frombuffer(info["candidates_sha256"].encode(), np.uint8)
    return {"wall_s": t.wall, "cpu_s": t.cpu, "answer_sha": hashlib.sha256(np.ascontiguousarray(out).tobytes())
            .hexdigest()[:16]}


def part_before_after(base: str | None) -> None:
    """Each case under ``base`` (PYTHONPATH first) and under this tree, in subprocesses."""
    import subprocess

    if not base:
        raise SystemExit("--parts before_after needs --base DIR (e.g. git archive main | tar -x -C DIR)")
    for name in ("kmeans_1m_k100", "typiclust_1m", "seals_1m_round2"):
        res = {}
        for tree in (base, None):
            env = dict(os.environ, **({"PYTHONPATH": tree} if tree else {}))
            proc = subprocess.run([sys.executable, __file__, "--case", name], env=env, capture_output=True, text=True,
                                  cwd=tree or ROOT)
            res[tree] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else \
                {"error": proc.stderr.strip().splitlines()[-1:]}
        b, a = res[base], res[None]
        record(part="before_after", case=name, before_s=b.get("wall_s"), before_cpu_s=b.get("cpu_s"),
               after_s=a.get("wall_s"), after_cpu_s=a.get("cpu_s"),
               speedup=round(b["wall_s"] / a["wall_s"], 1) if "wall_s" in a and "wall_s" in b else None,
               same_answer=a.get("answer_sha") == b.get("answer_sha"), error=b.get("error") or a.get("error"))


BEGIN, END = "<!-- neighbours.py: begin -->", "<!-- neighbours.py: end -->"
COMMAND = "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/neighbours.py --parts goals"


def _goal_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    def find(part: str, **kw: Any) -> dict[str, Any]:
        return next((r for r in rows if r["part"] == part and all(r.get(k) == v for k, v in kw.items())), {})

    pc, cov = find("probcover", mode="probcover_approx", rows=1_000_000), find("probcover", mode="coverage at 100k")
    se, ty = find("seals", rows=1_000_000, mode=None), find("typiclust", rows=1_000_000)
    ty10 = find("typiclust", rows=10_000_000)
    return [["ProbCover approx, B = 100, 1M rows, E = 32 ≤ 5 min", f"{pc.get('select_s')} s (CPU {pc.get('cpu_s')} s)",
             str(pc.get("load"))],
            ["… coverage within 2% of exact at 100k", f"loss {cov.get('loss_auto_pct')}% (own δ), "
             f"{cov.get('loss_pct')}% (exact δ)", str(cov.get("load"))],
            ["SEALS k = 10, kept index, round 2 at 1M rows, 50,000 labelled ≤ 5 s",
             f"{se.get('round2_s')} s (CPU {se.get('round2_cpu_s')} s); candidates identical to exact: "
             f"{se.get('identical_to_exact')}", str(se.get("load"))],
            ["TypiClust B = 100, 1M rows ≤ 30 s", f"{ty.get('select_s')} s (CPU {ty.get('cpu_s')} s)",
             str(ty.get("load"))],
            ["TypiClust, 10M rows: measured", f"{ty10.get('select_s')} s (CPU {ty10.get('cpu_s')} s)"
             if ty10 else "not run", str(ty10.get("load", ""))]]


def benchmarks_section() -> list[str]:
    """BENCHMARKS.md's section for the neighbour layer, from the stored results (empty when none)."""
    if not RESULTS.exists():
        return []
    rows = json.loads(RESULTS.read_text())["rows"]
    growth = [r for r in rows if r["part"] == "growth" and "exponent_wall" in r]
    out = [BEGIN, "## Neighbour layer: ProbCover, SEALS, TypiClust at scale (benchmarks/neighbours.py)", "",
           f"`{COMMAND}` (every goal number in one run; `--report` prints every stored row). Two in-process "
           "shards; wall seconds on this shared machine, the process's CPU seconds beside them (one thread: "
           "the work), the 1-minute load average of the row.", "",
           md_table(["goal (issue 16)", "measured", "load"], _goal_rows(rows)), ""]
    if growth:
        out += ["Growth, fitted over three sizes run in the same invocation (`t ∝ N^b`):", "",
                md_table(["strategy", "sizes", "b (wall)", "b (CPU)"],
                         [[r["strategy"], ", ".join(f"{n:,}" for n in r["sizes"]), str(r["exponent_wall"]),
                           str(r["exponent_cpu"])] for r in growth]), ""]
    ba = [r for r in rows if r["part"] == "before_after"]
    if ba:
        out += ["Before / after (`--parts before_after --base DIR`, DIR = `git archive main` unpacked; each case in a "
                "fresh process, same session):", "",
                md_table(["case", "before (wall / CPU s)", "after (wall / CPU s)", "same answer", "load"],
                         [[r["case"], f"{r['before_s']} / {r['before_cpu_s']}", f"{r['after_s']} / {r['after_cpu_s']}",
                           str(r["same_answer"]), str(r["load"])] for r in ba]), ""]
    return out + [END]


def md_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(r) + " |" for r in rows])


def update_benchmarks_md(path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Write the section to ``benchmarks/results/sections/neighbours.md`` (which the suite keeps
    when it regenerates BENCHMARKS.md) and into BENCHMARKS.md between its markers."""
    section = "\n".join(benchmarks_section())
    save_section("neighbours", section)
    splice_into_benchmarks_md(section, BEGIN, END, path)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as one Markdown table per part."""
    out = []
    for part in dict.fromkeys(r["part"] for r in rows):
        these = [r for r in rows if r["part"] == part]
        cols = list(dict.fromkeys(k for r in these for k in r if k != "part"))
        out.append(f"**{part}**\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in these:
            out.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true", help="print the stored results as Markdown and exit")
    ap.add_argument("--update-docs", action="store_true", help="write BENCHMARKS.md's section (and "
                    "benchmarks/results/sections/neighbours.md) from the stored results and exit")
    ap.add_argument("--parts", default=GOALS, help=f"comma-separated parts; 'goals' = {GOALS}")
    ap.add_argument("--base", help="before_after: a tree of the code before (e.g. `git archive main` unpacked)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(_case(args.case)))
        return
    if args.update_docs:
        update_benchmarks_md()
        return
    if args.report:
        print(markdown(json.loads(RESULTS.read_text())["rows"]))
        return
    parts = [p for spec in args.parts.split(",") for p in (GOALS.split(",") if spec == "goals" else [spec])]
    if RESULTS.exists():
        ROWS.extend(r for r in json.loads(RESULTS.read_text()).get("rows", []) if r.get("part") not in parts)
    for part in parts:
        print(f"== {part}", flush=True)
        if part == "typiclust_10m":
            part_typiclust((10_000_000,))
        elif part == "before_after":
            part_before_after(args.base)
        else:
            globals()[f"part_{part}"]()
    save()


if __name__ == "__main__":
    main()
