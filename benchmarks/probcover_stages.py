"""Where ProbCover's time goes, stage by stage, and how each stage grows with N (issue 16).

One process, one thread, two in-process shards, pools as ``benchmarks/neighbours.py`` makes
them (E = 32, B = 100). Per size: CPU seconds (``time.process_time``) of the purity rule (δ;
its k-means and cell assignment inside), the graph index (IVF training and assignment
inside), the range search that finds the edges, the graph assembly and the greedy; the
edges and the mean degree (rows ``cpu_<stage>[:<step>]``); then the fitted exponent ``t ∝ N^b`` of every stage::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/probcover_stages.py \\
        probcover_approx 100000,300000,1000000
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/probcover_stages.py \\
        probcover 20000,50000,100000

Writes ``benchmarks/results/probcover_stages-<strategy>.json``. The stages are the steps of
:func:`alscale.strategies.probcover_graph.select`, called one by one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import neighbours as nb  # noqa: E402

from alscale.index import faiss_ann  # noqa: E402
from alscale.index import neighbours_cells as cells_mod  # noqa: E402
from alscale.strategies import clustering  # noqa: E402
from alscale.strategies import probcover_graph as pcg  # noqa: E402
from alscale.strategies.probcover import ProbCoverApproxOptions, ProbCoverOptions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
T: dict[str, float] = defaultdict(float)
STAGE = ["-"]


@contextmanager
def stage(name: str):
    old, STAGE[0] = STAGE[0], name
    c = time.process_time()
    try:
        yield
    finally:
        T[name] += time.process_time() - c
        STAGE[0] = old


def _timed(f: Any, label: str) -> Any:
    def g(*a: Any, **k: Any) -> Any:
        c = time.process_time()
        try:
            return f(*a, **k)
        finally:
            T[f"{STAGE[0]}:{label}"] += time.process_time() - c
    return g


def instrument() -> None:
    """Time the sub-steps inside the stages: k-means, the exact cells' training and
    assignment, and FAISS IVF training and assignment (``add``)."""
    cells_mod._lloyd = _timed(cells_mod._lloyd, "cells_train")
    cells_mod._assign = _timed(cells_mod._assign, "cells_assign")
    pcg.kmeans = _timed(clustering.kmeans, "kmeans")
    f = faiss_ann.import_faiss()

    class TimedIVF(f.IndexIVFFlat):
        def train(self, x: Any) -> Any:
            return _timed(super().train, "ivf_train")(x)

        def add(self, x: Any) -> Any:
            return _timed(super().add, "ivf_add")(x)

    class Faiss:
        def __getattr__(self, k: str) -> Any:
            return TimedIVF if k == "IndexIVFFlat" else getattr(f, k)

    faiss_ann.import_faiss = Faiss


def run(x: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
    sh = nb.shards_of(x)
    T.clear()
    n = x.shape[0]
    c0 = time.process_time()
    with stage("delta"):
        delta = options["delta"]
        if delta == "auto":
            delta = pcg.purity_delta(sh, n_classes=options["n_classes"], purity=options["purity"], normalize=True,
                                     chunk_rows=options["chunk_rows"], seed=0, round=0,
                                     kmeans_iters=options["kmeans_iters"], sample=options["purity_sample"])
    params = pcg.graph_params(options["index"], options["index_params"])
    with stage("index"):
        sh.call(pcg._OP + "pcg_index", options["index"], params, True, 0, True)
    sizes = [int(v) for v in sh.call(pcg._PC + "pc_size")]
    with stage("range"):
        for ids, xx, _ in pcg.near_chunks(sh, sizes, options["chunk_rows"]):
            sh.call(pcg._OP + "pcg_edges", ids, xx, float(delta) ** 2)
    with stage("assemble"):
        edges = int(sum(sh.call(pcg._OP + "pcg_finish")))
    with stage("greedy"):
        picks, _ = pcg.greedy(sh, 100, int(options["offer"]))
    return {"rows": n, "delta": round(float(delta), 5), "edges": edges, "mean_degree": round(edges / n, 2),
            "picks": len(picks), "total_cpu": round(time.process_time() - c0, 2),
            **{f"cpu_{k}": round(v, 2) for k, v in sorted(T.items())}, "load": round(os.getloadavg()[0], 1)}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "probcover_approx"
    sizes = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "100000,300000,1000000").split(",")]
    cls = {"probcover": ProbCoverOptions, "probcover_approx": ProbCoverApproxOptions}[name]
    options = dataclasses.asdict(cls())
    instrument()
    out = []
    for n in sizes:
        out.append(run(nb.embeddings(n), options))
        print(json.dumps(out[-1]), flush=True)
    keys = [k for k in out[-1] if k not in ("rows", "delta", "picks", "load")]
    print(f"\n{name}, CPU seconds, fitted t ∝ N^b over {sizes}\n\n| stage | " +
          " | ".join(f"{n:,}" for n in sizes) + " | b |\n|---|" + "---|" * (len(sizes) + 1))
    for k in keys:
        v = [r.get(k, 0.0) for r in out]
        b = f"{np.polyfit(np.log(sizes), np.log(v), 1)[0]:.2f}" if len(sizes) > 1 and min(v) > 0 else "–"
        print(f"| {k} | " + " | ".join(str(x) for x in v) + f" | {b} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"probcover_stages-{name}.json").write_text(json.dumps({"strategy": name, "rows": out}, indent=1))


if __name__ == "__main__":
    main()
