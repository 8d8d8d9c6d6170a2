"""Class-imbalanced MNIST: BASE and quota-balanced BADGE against random and entropy (issue 19).

Emam et al. ("Active Learning at the ImageNet Scale", arXiv 2111.12880) found that popular
strategies lose to random at scale because their batches are class-imbalanced, and that
their balanced method, BASE, beats random. This is the small, CPU-sized version of that test.

Pool: the MNIST training images with digits 0-4 at full size and digits 5-9 at one tenth (the
first 10% of each minority digit's rows in file order): 30,596 + 2,940 = 33,536 rows, minority
digits 8.8% of the pool. Test: the MNIST test images, 892 of each digit (the first 892 in file
order; 892 is the rarest digit's count), so plain test accuracy *is* balanced accuracy (the
mean per-class recall). Representation: the top 50 whitened principal components of the pool's
pixels (fitted without labels); model: a linear classifier on them, retrained from scratch each
round (the setting of ``benchmarks/coldstart_mnist.py``). Every strategy starts from the same
20 random labels per trial and acquires b = 20 per round up to 300 labels, over 5 trials
(paired: same initial set and initial weights per trial).

Strategies: ``random``; ``entropy``; ``base_balanced`` (BASE: for the linear model its feature
space is the PCA space, the head the model itself); ``badge`` with ``strategy.quotas: {min: 2}``
(2 per predicted class: a fully balanced BADGE batch).

    python benchmarks/imbalanced_mnist.py [--trials 5] [--budget 300] [--batch 20]

Writes ``data/mnist-imb-pca50-{pool,test}.arrow`` once, one simulation per strategy under
``out/imbalanced_mnist/``, and to ``benchmarks/results/imbalanced_mnist/``: ``curves.png``
(mean ± std balanced accuracy), ``rounds.csv`` (every strategy, trial and round, with the
labelled set's minority share), ``summary.json`` and ``accuracy.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RESULTS = ROOT / "benchmarks" / "results" / "imbalanced_mnist"
MINORITY = (5, 6, 7, 8, 9)
KEEP_MINORITY = 0.1
#: name in the results -> (strategy, quotas)
STRATEGIES = {
    "random": ("random", None),
    "entropy": ("entropy", None),
    "base_balanced": ("base_balanced", None),
    "badge+quotas": ("badge", {"min": 2}),
}


def make_pools() -> tuple[Path, Path]:
    from alscale.pool import pool_table, read_shard, write_table
    from alscale.pool.mnist import mnist_pool
    from alscale.types import ShardSpec

    pool_path, test_path = DATA / "mnist-imb-pca50-pool.arrow", DATA / "mnist-imb-pca50-test.arrow"
    if pool_path.exists() and test_path.exists():
        return pool_path, test_path
    DATA.mkdir(exist_ok=True)
    raw = {}
    for split, rows in (("train", 60_000), ("test", 10_000)):
        path = DATA / f"mnist-{split}.arrow"
        if not path.exists():
            mnist_pool(str(path), split=split)
        raw[split] = read_shard(ShardSpec(str(path), 0, 0, rows), ["features", "label"])
    y = raw["train"].labels_N
    keep = np.ones(y.size, bool)
    for c in MINORITY:
        members = np.flatnonzero(y == c)
        keep[members[int(round(KEEP_MINORITY * members.size)):]] = False
    yt = raw["test"].labels_N
    per = int(np.bincount(yt).min())
    keep_t = np.zeros(yt.size, bool)
    for c in range(10):
        keep_t[np.flatnonzero(yt == c)[:per]] = True
    x = raw["train"].features_N_D[keep].astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    proj = vt[:50].T / (s[:50] / np.sqrt(x.shape[0]))  # whitened: unit variance per component
    for d, k, path in ((raw["train"], keep, pool_path), (raw["test"], keep_t, test_path)):
        z = ((d.features_N_D[k].astype(np.float64) - mean) @ proj).astype(np.float32)
        write_table(pool_table(d.row_ids_N[k], features_N_D=z, labels_N=d.labels_N[k]), str(path))
    return pool_path, test_path


def job(strategy: str, quotas: dict | None, pool: Path, test: Path, trials: int, budget: int, batch: int) -> dict:
    return {
        "pool": {"path": str(pool)},
        "model": {"factory": "linear", "kwargs": {"num_classes": 10}, "mc_samples": 1, "device": "cpu"},
        "strategy": {"name": strategy, "budget": batch, "quotas": quotas},
        "loop": {
            "test": str(test),
            "validation": 0,
            "initial": {"size": 20, "method": "random"},
            "trials": trials,
            "train": {"mode": "scratch", "epochs": 40, "draws_per_epoch": 2048, "batch_size": 32, "lr": 0.01,
                      "patience": None},
            "stop": {"budget": budget},
        },
        "runtime": {"executor": "local", "shards": 2},
        "seed": 0,
    }


def minority_share(run_dir: Path) -> dict[int, float]:
    """Per round r: the share of minority digits among the labels after round r's acquisition."""
    import pyarrow.parquet as pq

    out = {}
    labels: list[int] = []
    for f in sorted((run_dir / "ledger").glob("round-*.parquet")):
        labels += pq.read_table(f).column("label").to_pylist()
        out[int(f.stem.split("-")[1])] = float(np.isin(labels, MINORITY).mean())
    return out


def plot(records: list[dict], path: Path, names: list[str], title: str, pool_share: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in names:
        sizes = sorted({r["n_labels"] for r in records if r["strategy"] == name})
        acc = [[r["test_accuracy"] for r in records if r["strategy"] == name and r["n_labels"] == n] for n in sizes]
        mu, sd = np.array([np.mean(a) for a in acc]), np.array([np.std(a) for a in acc])
        ax.plot(sizes, mu, marker="o", ms=3, label=name)
        ax.fill_between(sizes, mu - sd, mu + sd, alpha=0.2)
        share = [[r["minority_share"] for r in records if r["strategy"] == name and r["n_labels"] == n] for n in sizes]
        ax2.plot(sizes, [np.mean(s) for s in share], marker="o", ms=3, label=name)
    ax.set_xlabel("labelled rows")
    ax.set_ylabel("balanced test accuracy (mean per-class recall)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    ax2.axhline(pool_share, color="k", lw=0.8, ls=":", label="pool share")
    ax2.set_xlabel("labelled rows")
    ax2.set_ylabel("share of digits 5-9 among the labels")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--strategies", nargs="*", default=list(STRATEGIES))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from alscale.jobspec import validate_job
    from alscale.loop.simulate import simulate
    from alscale.runtime import output

    pool, test = make_pools()
    records: list[dict] = []
    seconds = {}
    for name in args.strategies:
        strategy, quotas = STRATEGIES[name]
        spec = validate_job(job(strategy, quotas, pool, test, args.trials, args.budget, args.batch),
                            source=f"imbalanced-mnist-{name}")
        out = ROOT / "out" / "imbalanced_mnist" / name
        t0 = time.perf_counter()
        res = simulate(spec, out_dir=out, force=True, progress=False)
        seconds[name] = round(time.perf_counter() - t0, 1)
        for r in res.records:
            share = minority_share(out / "runs" / strategy / f"trial-{r['trial']}")
            records.append({**r, "strategy": name, "minority_share": share[r["round"]]})
        print(f"{name}: {seconds[name]} s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    from alscale.pool import open_pool, read_shard
    from alscale.types import ShardSpec

    info = open_pool(str(pool))
    labels = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["label"]).labels_N
    plot(records, RESULTS / "curves.png", args.strategies,
         f"MNIST, digits 5-9 at 1/10 ({info.n_rows:,} rows), PCA-50 + linear, b = {args.batch}, {args.trials} trials",
         float(np.isin(labels, MINORITY).mean()))
    keys = ["strategy", "trial", "round", "n_labels", "test_accuracy", "test_nll", "minority_share",
            "train_seconds", "acquire_seconds"]
    with open(RESULTS / "rounds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    sizes = sorted({r["n_labels"] for r in records})
    lines = ["| labels | " + " | ".join(args.strategies) + " |", "|---|" + "---|" * len(args.strategies)]
    table: dict[str, dict[int, dict]] = {}
    for n in sizes:
        row = []
        for name in args.strategies:
            acc = [r["test_accuracy"] for r in records if r["strategy"] == name and r["n_labels"] == n]
            share = [r["minority_share"] for r in records if r["strategy"] == name and r["n_labels"] == n]
            table.setdefault(name, {})[n] = {"balanced_accuracy": acc, "minority_share": share}
            row.append(f"{np.mean(acc):.3f} ± {np.std(acc):.3f}" if acc else "–")
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    # area under the curve (mean balanced accuracy over the acquired sizes) per trial
    auc = {name: [float(np.mean([r["test_accuracy"] for r in records if r["strategy"] == name and r["trial"] == t]))
                  for t in range(args.trials)] for name in args.strategies}
    lines += ["", "| mean over sizes (per trial) | " + " | ".join(args.strategies) + " |",
              "|---|" + "---|" * len(args.strategies),
              "| | " + " | ".join(" / ".join(f"{v:.3f}" for v in auc[n]) for n in args.strategies) + " |"]
    md = "\n".join(lines)
    (RESULTS / "accuracy.md").write_text(
        f"Balanced test accuracy (mean ± std over {args.trials} trials) by labelled-set size.\n\n{md}\n")
    summary = {"config": {"trials": args.trials, "budget": args.budget, "batch": args.batch,
                          "minority": list(MINORITY), "keep_minority": KEEP_MINORITY,
                          "strategies": {n: {"name": STRATEGIES[n][0], "quotas": STRATEGIES[n][1]}
                                         for n in args.strategies}},
               "results": {n: {str(k): v for k, v in d.items()} for n, d in table.items()},
               "mean_over_sizes_per_trial": auc, "seconds": seconds,
               "git_revision": output.git_revision(), "machine": output.machine()}
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
