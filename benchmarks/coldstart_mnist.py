"""Cold start on MNIST: TypiClust and ProbCover against random at 10-100 labels.

The cold-start papers (Hacohen et al. 2022; Yehuda et al. 2022) select on a fixed,
label-free representation and evaluate a classifier on it. Here the representation is the
top 50 principal components of the MNIST training pixels (fitted without labels, whitened;
a weaker representation than the papers' SimCLR), used both as each strategy's embedding
and as the features of a linear classifier (the papers' "linear evaluation" setting),
retrained from scratch every round. Each strategy chooses *all* its labels, the initial 10
included (``loop.initial.method`` = the strategy), so there is one simulation per strategy;
the trials share seeds.

    python benchmarks/coldstart_mnist.py [--trials 3] [--budget 100]

Writes ``data/mnist-pca50-{train20k,test}.arrow`` once, one simulation per strategy under
``out/coldstart/``, and the merged curves and table to
``benchmarks/results/loop/mnist_coldstart/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RESULTS = ROOT / "benchmarks" / "results" / "loop" / "mnist_coldstart"
STRATEGIES = ("typiclust", "probcover", "random")
#: The pool: the first 20,000 training images (ProbCover's delta-graph costs N^2 per acquisition,
#: recomputed every round here); the PCA is fitted on all 60,000 (no labels used).
TRAIN_ROWS = 20_000


def make_pools() -> tuple[Path, Path]:
    from alscale.pool import pool_table, read_shard, write_table
    from alscale.pool.mnist import mnist_pool
    from alscale.types import ShardSpec

    train, test = DATA / "mnist-pca50-train20k.arrow", DATA / "mnist-pca50-test.arrow"
    if train.exists() and test.exists():
        return train, test
    raw = {}
    for split in ("train", "test"):
        path = DATA / f"mnist-{split}.arrow"
        if not path.exists():
            mnist_pool(str(path), split=split)
        info_rows = 60_000 if split == "train" else 10_000
        raw[split] = read_shard(ShardSpec(str(path), 0, 0, info_rows), ["features", "label"])
    x = raw["train"].features_N_D.astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    proj = vt[:50].T / (s[:50] / np.sqrt(x.shape[0]))  # whitened: unit variance per component
    for split, path in (("train", train), ("test", test)):
        d = raw[split]
        z = ((d.features_N_D.astype(np.float64) - mean) @ proj).astype(np.float32)
        keep = slice(None) if split == "test" else slice(0, TRAIN_ROWS)  # the first 20,000 training images
        write_table(pool_table(d.row_ids_N[keep], features_N_D=z[keep], embeddings_N_D=z[keep],
                               labels_N=d.labels_N[keep]), str(path))
    return train, test


def job(strategy: str, train: Path, test: Path, trials: int, budget: int) -> dict:
    return {
        "pool": {"path": str(train)},
        "model": {"factory": "linear", "kwargs": {"num_classes": 10}, "mc_samples": 1, "device": "cpu"},
        "strategy": {"name": strategy, "budget": 10, "embedding": "column"},
        "loop": {
            "test": str(test),
            "validation": 0,
            "initial": {"size": 10, "method": strategy},
            "trials": trials,
            "train": {"mode": "scratch", "epochs": 40, "draws_per_epoch": 2048, "batch_size": 32, "lr": 0.01,
                      "patience": None},
            "stop": {"budget": budget},
        },
        "runtime": {"executor": "local", "shards": 2},
        "seed": 0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--strategies", nargs="*", default=list(STRATEGIES))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from alscale.jobspec import validate_job
    from alscale.loop.curves import plot_curves
    from alscale.loop.simulate import simulate

    train, test = make_pools()
    records = []
    for strategy in args.strategies:
        spec = validate_job(job(strategy, train, test, args.trials, args.budget), source=f"coldstart-{strategy}")
        res = simulate(spec, out_dir=ROOT / "out" / "coldstart" / strategy, force=True, progress=False)
        records += res.records
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot_curves(records, RESULTS / "curves.png", title="MNIST cold start: PCA-50 representation, linear classifier")
    sizes = sorted({r["n_labels"] for r in records})
    lines = ["| labels | " + " | ".join(args.strategies) + " |", "|---|" + "---|" * len(args.strategies)]
    summary = {}
    for n in sizes:
        row = []
        for strategy in args.strategies:
            acc = [r["test_accuracy"] for r in records if r["strategy"] == strategy and r["n_labels"] == n]
            summary.setdefault(strategy, {})[n] = acc
            row.append(f"{np.mean(acc):.3f} ± {np.std(acc):.3f}" if acc else "–")
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    table = "\n".join(lines)
    (RESULTS / "accuracy.md").write_text(
        f"Test accuracy (mean ± std over {args.trials} trials) by labelled-set size.\n\n{table}\n")
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
