"""``make demo``: a small, real active-learning round trip on a million-row pool.

What it does (every acquisition through the same coordinator and Ray executor as
``alscale run``)::

    a synthetic pool with planted classes (1,000,000 rows by default) and a held-out test set
    a small labelled start: ``initial`` rows, the same number from each class
    for each of the job's strategy (BADGE by default) and ``random``, ``rounds`` times:
        train the model from scratch on the labelled rows, test it on the held-out set
        acquire ``strategy.budget`` rows from the whole pool (the trained weights are the
            job's checkpoint, the strategy's ledger its labelled set)
        the simulated oracle (the pool's ``label`` column) labels them -> the ledger
    print a table: test accuracy after each batch, the classes each batch covers, the mean
        predictive entropy of each batch under the model that picked it
    ``alscale report`` of the strategy's first acquisition

Pairing: both strategies start from the same labelled rows, and round r of both trains from
the same initial weights with the same draw order, so the two curves differ only by what
the strategies picked. Everything is keyed by ``seed``.

Why BADGE (Ash et al., ICLR 2020) on separable planted classes: with a handful of labels
the model is wrong about whole regions; uncertainty alone (entropy) then keeps querying
one confused boundary, while BADGE's k-means++ over gradient embeddings takes uncertain
rows that are also diverse. Measured over 5 seeds on this task (README, "The demo"), BADGE
beat random after every batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alscale.errors import AlscaleError

log = logging.getLogger(__name__)

#: The planted task: nearly separable classes (blob centres ~12 noise SDs apart), no label noise.
SYNTH = {"dim": 64, "classes": 10, "separation": 12.0, "label_noise": 0.0, "clusters_per_class": 2}
#: The accuracy whose labels-to-reach the demo prints.
TARGET = 0.95
#: The planted task's seed (the same pool and test set for every ``seed`` of the demo).
POOL_SEED = 0
#: Training recipe of every round (Adam; an "epoch" of 2,048 draws so tiny sets get enough steps).
TRAIN = {"epochs": 10, "draws_per_epoch": 2048, "batch_size": 64, "lr": 1e-3, "patience": None}


@dataclass
class DemoResult:
    """What :func:`run_demo` measured; ``rows[strategy]`` holds one dict per round."""

    strategy: str
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    report: Path | None = None
    out_dir: Path | None = None
    pool_rows: int = 0
    test_rows: int = 0
    seconds: float = 0.0


def synth_command(path: str, rows: int, seed: int, split: str = "pool") -> str:
    """The ``alscale pool synth`` command that writes the demo's pool (or test set)."""
    s = SYNTH
    return (f"alscale pool synth {path} --rows {rows} --dim {s['dim']} --classes {s['classes']} --seed {seed} "
            f"--separation {s['separation']:g} --label-noise {s['label_noise']:g} --split {split}")


def ensure_pool(path: str, rows: int, seed: int, split: str = "pool") -> None:
    """Write the demo pool at ``path`` unless it is there; refuse one of another size."""
    from alscale.pool import open_pool, synth_pool

    if Path(path).exists():
        info = open_pool(path)
        if info.n_rows != rows or info.feature_dim != SYNTH["dim"] or not info.has_label:
            raise AlscaleError(f"demo pool {path} has {info.n_rows:,} rows of {info.feature_dim} features; the demo "
                               f"wants {rows:,} x {SYNTH['dim']} with labels: delete it, or pass another path")
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    print(f"making {path}: {synth_command(path, rows, seed, split)}", flush=True)
    synth_pool(path, rows=rows, seed=seed, split=split, **SYNTH)


def _labels(path: str) -> tuple[Any, np.ndarray, np.ndarray]:
    from alscale.pool import open_pool, read_shard
    from alscale.types import ShardSpec

    info = open_pool(path)
    d = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["features", "label"])
    assert d.features_N_D is not None and d.labels_N is not None
    if not np.array_equal(d.row_ids_N, np.arange(info.n_rows)):
        raise AlscaleError(f"demo pool {path}: row_id must be 0..N-1 (a synthetic pool); make it with "
                           "alscale pool synth")
    return info, d.features_N_D, d.labels_N


def _entropy_B(model: Any, x_B_D: np.ndarray) -> np.ndarray:
    """Predictive entropy (nats) of the deterministic model on each row."""
    import torch

    from alscale.scoring.train import _logits

    with torch.inference_mode():
        lp = torch.log_softmax(_logits(model(torch.as_tensor(np.array(x_B_D, np.float32)))).float(), dim=1)
    return -(lp.exp() * lp).sum(dim=1).numpy()


@dataclass
class _Demo:
    """What both arms of the demo share."""

    job: Any  # alscale.jobspec.JobSpec
    x_N_D: np.ndarray
    y_N: np.ndarray
    test: tuple[np.ndarray, np.ndarray]  # (features, labels) of the held-out pool
    start_ids: np.ndarray  # the balanced initial labelled set
    executor: Any
    out: Path
    seed: int
    rounds: int
    report: bool


def run_demo(job_path: str | Path, *, pool: str | None = None, test: str, out: str | Path, rows: int | None = None,
             test_rows: int = 10_000, initial: int = 20, rounds: int = 3, seed: int = 0,
             overrides: Sequence[str] = (), report: bool = True) -> DemoResult:
    """Run the demo (see the module doc) and return its measurements.

    ``job_path``: the acquisition job (``jobs/demo.yaml``); its strategy is compared with
    ``random``. ``pool`` / ``rows``: the pool file and its size (made if missing).
    """
    import torch

    from alscale.jobspec import load_job
    from alscale.runtime.coordinator import make_executor

    started = time.perf_counter()
    job = load_job(job_path, [*overrides, f"seed={seed}"] + ([f"pool.path={pool}"] if pool else []))
    if job.model is None:
        raise AlscaleError(f"job {job_path}: the demo trains the job's model; give it a model section")
    if rows is not None:  # the task is fixed (synth seed 0); ``seed`` keys the run's own randomness
        ensure_pool(job.pool, rows, POOL_SEED)
    ensure_pool(test, test_rows, POOL_SEED, split="test")
    info, x_N_D, y_N = _labels(job.pool)
    _, xt_T_D, yt_T = _labels(test)
    out = _demo_dir(Path(out))
    strategy = job.strategy.name
    if strategy == "random":
        raise AlscaleError("the demo compares the job's strategy with random; give the job another strategy")
    start_ids = _initial_set(y_N, initial, seed)
    torch.set_num_threads(1)  # the two Ray workers take the other cores
    result = DemoResult(strategy=strategy, out_dir=out, pool_rows=info.n_rows, test_rows=int(yt_T.size))
    demo = _Demo(job, x_N_D, y_N, (xt_T_D, yt_T), start_ids, make_executor(job, job.runtime.shards), out, seed,
                 rounds, report)
    try:
        for name in (strategy, "random"):
            _run_arm(demo, name, result.rows.setdefault(name, []))
    finally:
        demo.executor.close()
    if report:
        from alscale.workflow.report import build_report

        first = out / strategy / "round-1"
        result.report = build_report(first)
        shutil.rmtree(first / "cache", ignore_errors=True)  # ~0.5 GB of model outputs, read by the report
    result.seconds = time.perf_counter() - started
    (out / "demo.json").write_text(json.dumps({k: v for k, v in dataclasses.asdict(result).items()
                                               if k not in ("report", "out_dir")}, indent=2) + "\n")
    return result


def _demo_dir(out: Path) -> Path:
    """The output directory, emptied of an earlier demo's outputs (never of anything else)."""
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / "demo.json").exists()):
            raise AlscaleError(f"output {out} exists and does not hold an earlier demo (no demo.json); choose "
                               "another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "demo.json").write_text('{"status": "running"}\n')  # marks the directory as the demo's
    return out


def _initial_set(y_N: np.ndarray, initial: int, seed: int) -> np.ndarray:
    """``initial`` row ids, as many of each class (seeded)."""
    classes = int(y_N.max()) + 1
    if initial < classes or initial % classes:
        raise AlscaleError(f"--initial must be a positive multiple of the {classes} classes; got {initial}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y_N == c), initial // classes, replace=False)
                                   for c in range(classes)]))


def _run_arm(demo: _Demo, name: str, records: list[dict[str, Any]]) -> None:
    """One arm (the job's strategy or random): train, evaluate, acquire, label, ``rounds`` times."""
    import torch

    from alscale.loop.ledger import Ledger
    from alscale.runtime.coordinator import job_model_spec
    from alscale.scoring.train import evaluate, fresh_model, train_classifier

    job, x_N_D, y_N, seed = demo.job, demo.x_N_D, demo.y_N, demo.seed
    spec = job_model_spec(job)
    ledger = Ledger(demo.out / name / "ledger")
    ledger.append(demo.start_ids, y_N[demo.start_ids], 0, "initial:balanced")
    for rnd in range(demo.rounds + 1):
        labelled = ledger.row_ids
        model = fresh_model(spec, x_N_D.shape[1], seed * 1000 + rnd)
        train_classifier(model, x_N_D[np.sort(labelled)], y_N[np.sort(labelled)], seed=seed * 1000 + rnd, **TRAIN)
        acc, _ = evaluate(model, *demo.test)
        rec: dict[str, Any] = {"round": rnd, "labels": int(labelled.size), "test_accuracy": acc}
        records.append(rec)
        if rnd == demo.rounds:
            break
        ckpt = demo.out / name / f"model-round-{rnd}.pt"
        torch.save(model.state_dict(), ckpt)
        picked = _acquire(demo, name, rnd, ledger, ckpt, model, rec)
        ledger.append(picked, y_N[picked], rnd + 1, name)


def _acquire(demo: _Demo, name: str, rnd: int, ledger: Any, ckpt: Path, model: Any, rec: dict[str, Any]
             ) -> np.ndarray:
    """The round's batch by ``name`` (through the coordinator); its classes, entropy and timings go to ``rec``."""
    from alscale.runtime.coordinator import run_job

    job = demo.job
    run_dir = demo.out / name / f"round-{rnd + 1}"
    acq = job.replace(
        labeled=str(ledger.path), output=None,
        strategy=job.strategy.replace(name=name, budget=job.strategy.budget, round=rnd),
        model=None if name == "random" else job.model.replace(checkpoint=str(ckpt)),
        runtime=job.runtime.replace(cache=name == job.strategy.name and rnd == 0 and demo.report))
    res = run_job(acq, out_dir=run_dir, force=True, progress=False, executor=demo.executor)
    picked = np.asarray(res.selection.indices_B, np.int64)
    ph = res.manifest["phase_seconds"]
    rec.update(batch_classes=int(np.unique(demo.y_N[picked]).size),
               batch_entropy=float(_entropy_B(model, demo.x_N_D[picked]).mean()),
               score_s=ph.get("score", 0.0), select_s=ph.get("select", 0.0), run_dir=str(run_dir))
    return picked


def format_result(r: DemoResult) -> str:
    """The table the demo prints: one line per labelled-set size."""
    s, ours, rand = r.strategy, r.rows[r.strategy], r.rows["random"]
    w = max(len(s), 6)
    lines = [f"test accuracy on {r.test_rows:,} held-out rows after each batch (the same start and training for both):",
             f"  {'labels':>6}  {s:>{w}}  {'random':>{w}}  {'gain':>6}   | the batch that followed: classes "
             f"(of {SYNTH['classes']}) {s}/random, mean entropy (nats) {s}/random"]
    wins = 0
    for a, b in zip(ours, rand):
        gain = a["test_accuracy"] - b["test_accuracy"]
        wins += a["round"] > 0 and gain > 0
        line = f"  {a['labels']:>6}  {a['test_accuracy']:>{w}.3f}  {b['test_accuracy']:>{w}.3f}  {gain:>+6.3f}"
        if "batch_classes" in a:
            line += (f"   | {a['batch_classes']:>2} / {b['batch_classes']:<2}   "
                     f"{a['batch_entropy']:.2f} / {b['batch_entropy']:.2f}")
        lines.append(line)
    n = len(ours) - 1
    gains = [a["test_accuracy"] - b["test_accuracy"] for a, b in zip(ours[1:], rand[1:])]
    lines.append(f"{s} beat random after {wins} of {n} batches (mean gain {100 * np.mean(gains):+.1f} points).")
    def first(rows: list[dict[str, Any]]) -> str:
        hit = next((a["labels"] for a in rows if a["test_accuracy"] >= TARGET), None)
        return f"{hit}" if hit is not None else f"more than {rows[-1]['labels']}"

    lines.append(f"labels to {TARGET:.0%} test accuracy: {s} {first(ours)}, random {first(rand)}.")
    sc = np.median([a["score_s"] for a in ours if "score_s" in a])
    se = np.median([a["select_s"] for a in ours if "select_s" in a])
    lines.append(f"each {s} acquisition over the {r.pool_rows:,}-row pool: score {sc:.1f} s, select {se:.1f} s "
                 f"(median); total {r.seconds:.0f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alscale.workflow.demo", description=__doc__.split("\n\n")[0],
                                epilog="Example: python -m alscale.workflow.demo jobs/demo.yaml --rows 1000000")
    p.add_argument("job", nargs="?", default="jobs/demo.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--rows", type=int, default=1_000_000, help="pool rows (the pool is made if missing)")
    p.add_argument("--pool", help="pool file (default: the job's pool.path)")
    p.add_argument("--test", default="data/demo-test.arrow", help="held-out test set (made if missing)")
    p.add_argument("--test-rows", type=int, default=10_000)
    p.add_argument("--out", default="out/demo")
    p.add_argument("--initial", type=int, default=20, help="labelled rows to start with (balanced)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        r = run_demo(args.job, pool=args.pool, test=args.test, out=args.out, rows=args.rows, test_rows=args.test_rows,
                     initial=args.initial, rounds=args.rounds, seed=args.seed, overrides=args.overrides)
    except AlscaleError as exc:
        print(f"alscale demo: error: {exc}", file=sys.stderr)
        return 2
    print(format_result(r))
    print(f"report of the first {r.strategy} batch: {r.report}  (alscale report {r.out_dir}/{r.strategy}/round-1)")
    print(f"ledgers, selections and manifests: {r.out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
