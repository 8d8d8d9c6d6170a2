"""``alscale simulate``: the pool-based active-learning loop with a simulated oracle.

For every trial and every strategy of the job's ``loop`` section (see
:mod:`alscale.loop.spec`)::

    initial labelled set (balanced / random / a strategy)  -> ledger round 0
    repeat:
        train the model on the labelled rows (from scratch, or fine-tune)
        evaluate on the held-out test pool (and the validation rows)
        stop?  (budget, target accuracy, plateau, max rounds, pool exhausted)
        acquire b rows: the same coordinator and executor as ``alscale run``, on the pool
            (or on a random subsample of its unlabelled rows), the trained weights as the
            job's checkpoint, the ledger as its labelled set
        stop?  (max pool uncertainty)
        the oracle labels them -> ledger round r+1

Pairing: within a trial every strategy starts from the same initial set, the same
validation rows, the same per-round initial weights and the same MC-dropout masks, so
strategies differ only by what they pick. Every random choice is keyed by the job's seed.

Output directory::

    rounds.csv, rounds.parquet     one row per (strategy, trial, round)
    labels_to_reach.md / .csv      the papers' table (set size − b when first reached)
    curves.png                     median test accuracy and interquartile band per strategy
    summary.json                   the protocol, stop reasons, totals, versions
    runs/<strategy>/trial-<t>/ledger/round-*.parquet    the append-only labelled ledger
    runs/<strategy>/trial-<t>/round-<r>/                each acquisition's selection + manifest
    work/                          the working pool (minus validation rows), candidate pools,
                                   the current checkpoint
"""

from __future__ import annotations

import io
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
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from alscale.errors import AlscaleError
from alscale.fsio import AtomicFile, atomic_write
from alscale.jobspec import JobSpec, StrategyConfig
from alscale.loop import curves
from alscale.loop.ledger import Ledger
from alscale.loop.oracle import SimulatedOracle
from alscale.loop.spec import LoopSpec, parse_loop
from alscale.loop.stopping import stop_after_eval, stop_after_scoring
from alscale.pool import open_pool, pool_table, read_shard, write_table
from alscale.types import ShardSpec

log = logging.getLogger(__name__)

DEFAULT_TARGETS = (0.90, 0.95)
_OUTPUT_NAMES = ("rounds.csv", "rounds.parquet", "labels_to_reach.md", "labels_to_reach.csv", "curves.png",
                 "summary.json", "runs", "work")
# Streams that separate the loop's random choices under one root seed.
_VALIDATION, _INITIAL, _INIT_WEIGHTS, _TRAIN, _ACQUIRE, _SUBSAMPLE = range(1, 7)


def derive_seed(seed: int, *keys: int) -> int:
    """A 31-bit seed, a pure function of the root seed and ``keys``."""
    return int(np.random.SeedSequence([int(seed), 0x4C4F4F50, *map(int, keys)]).generate_state(1)[0] >> 1)


@dataclass
class SimulationResult:
    out_dir: Path
    records: list[dict[str, Any]]
    table: list[dict[str, Any]]
    stop_reasons: dict[str, dict[int, str]]


@dataclass
class _Pool:
    """The working pool in memory (zero-copy views where possible)."""

    path: str
    row_ids_N: np.ndarray
    features_N_D: np.ndarray
    labels_N: np.ndarray
    embeddings_N_E: np.ndarray | None = None  # the pool's own 'embedding' column, carried along

    def __post_init__(self) -> None:
        self._order = np.argsort(self.row_ids_N, kind="stable")

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        return self._order[np.searchsorted(self.row_ids_N, row_ids, sorter=self._order)]


def _read(path: str, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    info = open_pool(path)
    missing = [c for c, ok in (("features", info.feature_dim is not None), ("label", info.has_label)) if not ok]
    if missing:
        raise AlscaleError(f"{what} {info.path} has no {' and no '.join(repr(m) for m in missing)} column; the "
                           "loop trains on features and its simulated oracle reveals the label column")
    data = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["features", "label"])
    assert data.features_N_D is not None and data.labels_N is not None
    return data.row_ids_N, data.features_N_D, data.labels_N, info


def check_simulation_dir(out: Path, force: bool) -> None:
    """Refuse to overwrite an earlier simulation's outputs unless ``force`` (then remove them)."""
    if out.exists() and not out.is_dir():
        raise AlscaleError(f"output {out} exists and is not a directory; choose another --out")
    present = [n for n in _OUTPUT_NAMES if (out / n).exists()]
    if present and not force:
        raise AlscaleError(f"output {out} already holds a simulation ({present[0]}); pass --force to replace it "
                           "or choose another --out")
    for name in present:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def simulate(
    job: JobSpec,
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
    progress: bool | None = None,
    targets: Sequence[float] = DEFAULT_TARGETS,
) -> SimulationResult:
    """Run the job's active-learning loop (every strategy × trial) and write the outputs.

    All input checks (loop section, pools, model) run before anything is written.
    """
    loop = parse_loop(job)
    target = out_dir if out_dir is not None else job.output
    if target is None:
        raise AlscaleError("no output directory: set 'output' in the job or pass --out DIR")
    out = Path(target)
    ids, x, y, info = _read(job.pool, "pool")
    _, test_x, test_y, test_info = _read(loop.test, "loop.test pool")
    if test_info.feature_dim != info.feature_dim:
        raise AlscaleError(f"loop.test pool {test_info.path} has {test_info.feature_dim} features, the pool "
                           f"{info.feature_dim}; they must come from the same data")
    need = loop.validation + loop.initial_size + 1
    if info.n_rows < need:
        raise AlscaleError(f"pool {info.path} has {info.n_rows} rows; the loop needs at least {need} "
                           "(validation + initial set + one to acquire)")
    if loop.subsample is not None and loop.subsample < job.runtime.shards:
        raise AlscaleError(f"loop.subsample {loop.subsample} is below runtime.shards {job.runtime.shards}; "
                           "every shard needs a row")
    _check_model(job, int(info.feature_dim))
    if progress is None:
        progress = sys.stderr.isatty()
    from alscale.runtime.output import OutputLock

    with OutputLock(out):  # one simulation per output directory
        return _simulate(job, loop, out, force, progress, targets, (ids, x, y, info), (test_x, test_y))


@dataclass
class _Sim:
    """What every strategy and trial of one simulation shares."""

    job: JobSpec
    loop: LoopSpec
    pool: _Pool
    oracle: SimulatedOracle
    test: tuple[np.ndarray, np.ndarray]  # (features, labels) of the held-out pool
    val: tuple[np.ndarray, np.ndarray]  # (features, labels) of the validation rows (maybe none)
    executor: Any
    out: Path
    progress: bool
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def work(self) -> Path:
        return self.out / "work"


def _simulate(job: JobSpec, loop: LoopSpec, out: Path, force: bool, progress: bool, targets: Sequence[float],
              pool_arrays: tuple, test: tuple) -> SimulationResult:
    from alscale.runtime.coordinator import make_executor

    info = pool_arrays[3]
    check_simulation_dir(out, force)
    # Each round scores a new model once: no per-chunk caches for --resume (alscale.runtime.cache).
    job = job.replace(runtime=job.runtime.replace(cache=False))
    (out / "work").mkdir(parents=True, exist_ok=True)
    pool, val = _working_pool(job, loop, pool_arrays, out / "work")
    oracle = SimulatedOracle(pool.row_ids_N, pool.labels_N, source=info.path)
    stop_reasons: dict[str, dict[int, str]] = {}
    protocol = {"job": job.to_dict(), "loop": loop.to_dict(), "pool_rows": info.n_rows,
                "working_pool_rows": int(pool.row_ids_N.size), "test_rows": int(test[1].size)}
    sim = _Sim(job, loop, pool, oracle, test, val, make_executor(job, job.runtime.shards), out, progress)
    started = time.perf_counter()
    try:
        for trial in range(loop.trials):
            initial = _initial_set(job, loop, pool, trial, sim.executor, sim.work)
            for strat in loop.strategies:
                stop_reasons.setdefault(strat.name, {})[trial] = _run_one(sim, strat, trial, initial)
    finally:
        sim.executor.close()
    table = curves.summary_table(sim.records, targets)
    _write_summary(sim, info, table, targets, {**protocol, "stop_reasons": stop_reasons}, started)
    return SimulationResult(out_dir=out, records=sim.records, table=table, stop_reasons=stop_reasons)


def _working_pool(job: JobSpec, loop: LoopSpec, pool_arrays: tuple, work: Path
                  ) -> tuple[_Pool, tuple[np.ndarray, np.ndarray]]:
    """The pool the loop acquires from, and the validation rows: drawn once (seeded) and
    removed from the pool for the whole simulation."""
    ids, x, y, info = pool_arrays
    rng = np.random.default_rng(derive_seed(job.seed, _VALIDATION))
    val_pos = np.sort(rng.choice(info.n_rows, loop.validation, replace=False)) if loop.validation else \
        np.empty(0, np.int64)
    keep = np.ones(info.n_rows, bool)
    keep[val_pos] = False
    emb = None
    if info.embedding_dim is not None:  # a fixed representation (e.g. self-supervised) for the strategies
        emb = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["embedding"]).embeddings_N_D
    if loop.validation:
        pool = _Pool(str(work / "pool.arrow"), ids[keep], x[keep], y[keep], None if emb is None else emb[keep])
        write_table(pool_table(pool.row_ids_N, features_N_D=pool.features_N_D, labels_N=pool.labels_N,
                               embeddings_N_D=pool.embeddings_N_E), pool.path, format="ipc")
    else:
        pool = _Pool(info.path, ids, x, y, emb)
    return pool, (x[val_pos], y[val_pos])


def _write_summary(sim: _Sim, info: Any, table: list[dict[str, Any]], targets: Sequence[float],
                   protocol: dict[str, Any], started: float) -> None:
    """``labels_to_reach.md`` / ``.csv``, ``curves.png`` and ``summary.json``."""
    from alscale.runtime import output

    job, loop, out = sim.job, sim.loop, sim.out
    atomic_write(out / "labels_to_reach.md", curves.markdown_table(table))
    _write_csv(out / "labels_to_reach.csv", table)
    curves.plot_curves(sim.records, out / "curves.png", targets=targets,
                       title=f"{Path(job.source or 'job').stem}: {info.n_rows:,}-row pool, b = "
                             f"{'/'.join(sorted({str(st.budget) for st in loop.strategies}))}, "
                             f"{loop.trials} trial{'s' if loop.trials > 1 else ''}")
    stop_reasons = protocol.pop("stop_reasons")
    summary = {**protocol, "targets": list(targets), "labels_to_reach": table,
               "stop_reasons": {s: {str(t): r for t, r in v.items()} for s, v in stop_reasons.items()},
               "seconds": round(time.perf_counter() - started, 3), "versions": output.versions(),
               "git_revision": output.git_revision(), "machine": output.machine()}
    atomic_write(out / "summary.json", json.dumps(_finite(summary), indent=2, default=_json_default,
                                                   allow_nan=False) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return str(obj)


def _finite(obj: Any) -> Any:
    """JSON has no infinity: a never-reached target (∞) is written as null."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _check_model(job: JobSpec, in_features: int) -> None:
    """Build the model once in the driver so factory and dimension errors come before any output."""
    from alscale.scoring.train import fresh_model

    fresh_model(_model_spec(job), in_features, 0)


def _model_spec(job: JobSpec) -> Any:
    from alscale.runtime.coordinator import job_model_spec

    return job_model_spec(job)


def _initial_set(job: JobSpec, loop: LoopSpec, pool: _Pool, trial: int, executor: Any, work: Path) -> np.ndarray:
    """Row ids of the trial's initial labelled set (shared by every strategy of the trial)."""
    rng = np.random.default_rng(derive_seed(job.seed, _INITIAL, trial))
    n, size = pool.row_ids_N.size, loop.initial_size
    if loop.initial_method == "random":
        return pool.row_ids_N[np.sort(rng.choice(n, size, replace=False))]
    if loop.initial_method == "balanced":
        classes = np.unique(pool.labels_N)
        per, extra = divmod(size, classes.size)
        chosen = []
        for i, c in enumerate(classes):
            members = np.flatnonzero(pool.labels_N == c)
            take = per + (1 if i < extra else 0)
            if members.size < take:
                raise AlscaleError(f"loop.initial: class {int(c)} has {members.size} rows, fewer than the "
                                   f"{take} a balanced initial set of {size} needs; lower loop.initial.size")
            chosen.append(rng.choice(members, take, replace=False))
        return pool.row_ids_N[np.sort(np.concatenate(chosen))]
    # A strategy: the untrained model (or the pool's columns) through the coordinator.
    from alscale.runtime.coordinator import run_job, uses_model
    from alscale.scoring.train import fresh_model

    init_job = job.replace(
        pool=pool.path, labeled=None, loop=None, output=None,
        strategy=StrategyConfig(name=loop.initial_method, budget=size, round=0, embedding=job.strategy.embedding),
        seed=derive_seed(job.seed, _ACQUIRE, trial, 0))
    if uses_model(init_job):  # the untrained model, with the weights round 0 starts from
        ckpt = work / "initial-model.pt"
        _save_state(fresh_model(_model_spec(job), pool.features_N_D.shape[1],
                                derive_seed(job.seed, _INIT_WEIGHTS, trial, 0)), ckpt)
        assert job.model is not None
        init_job = init_job.replace(model=job.model.replace(checkpoint=str(ckpt)))
    else:
        init_job = init_job.replace(model=None)
    result = run_job(init_job, out_dir=work / f"initial-trial-{trial}", force=True, progress=False,
                     executor=executor)
    return np.asarray(result.selection.indices_B, dtype=np.int64)


def _save_state(model: Any, path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write(path, buf.getbuffer())


def _run_one(sim: _Sim, strat: StrategyConfig, trial: int, initial: np.ndarray) -> str:
    """One strategy, one trial: rounds until a stopping criterion fires; returns its reason."""
    from tqdm import tqdm

    run_dir = sim.out / "runs" / strat.name / f"trial-{trial}"
    ledger = Ledger(run_dir / "ledger")
    ledger.append(initial, sim.oracle.label(initial), 0, f"initial:{sim.loop.initial_method}")
    stop = sim.loop.stop
    watched: list[float] = []
    model = None
    bar = tqdm(total=stop.budget, initial=len(ledger), unit="labels", desc=f"{strat.name} trial {trial}",
               disable=not sim.progress, file=sys.stderr)
    try:
        for rnd in range(10**9):
            labelled = ledger.row_ids
            model, record, fit = _train_and_evaluate(sim, strat, trial, rnd, model, labelled)
            watched.append(record["test_accuracy"] if stop.metric == "test" else float(record["val_accuracy"] or 0.0))
            bar.set_postfix_str(f"acc {record['test_accuracy']:.4f}")
            n_unlabeled = sim.pool.row_ids_N.size - labelled.size
            reason = stop_after_eval(stop, watched, int(labelled.size), int(n_unlabeled), rnd)
            if reason is None:
                reason, picked = _acquire(sim, strat, trial, rnd, ledger, model, run_dir, record)
                if reason is None:
                    ledger.append(picked, sim.oracle.label(picked), rnd + 1, strat.name)
                    record["n_acquired"] = int(picked.size)
                    bar.update(int(picked.size))
                _write_records(sim.out, sim.records)
            log.info("%s trial %d round %d: %d labels, test acc %.4f, nll %.4f (train %.1f s, %d epochs)%s",
                     strat.name, trial, rnd, labelled.size, record["test_accuracy"], record["test_nll"],
                     fit.seconds, fit.epochs, f"; stop: {reason}" if reason else "")
            if reason is not None:
                record["stop_reason"] = reason
                return reason
    finally:
        bar.close()
    raise AssertionError("unreachable")


def _train_and_evaluate(sim: _Sim, strat: StrategyConfig, trial: int, rnd: int, model: Any, labelled: np.ndarray
                        ) -> tuple[Any, dict[str, Any], Any]:
    """Train the round's model on the labelled rows (fresh weights unless fine-tuning), evaluate
    it, and record the round; returns (model, record, fit)."""
    from alscale.scoring.device import resolve_device
    from alscale.scoring.train import evaluate, fresh_model, train_classifier

    job, pool, train, (val_x, val_y) = sim.job, sim.pool, sim.loop.train, sim.val
    spec = _model_spec(job)
    device = resolve_device(spec.device)
    pos = np.sort(pool.positions(labelled))
    if model is None or train.mode == "scratch":
        model = fresh_model(spec, pool.features_N_D.shape[1], derive_seed(job.seed, _INIT_WEIGHTS, trial, rnd))
    has_val = val_y.size > 0
    fit = train_classifier(
        model, pool.features_N_D[pos], pool.labels_N[pos], seed=derive_seed(job.seed, _TRAIN, trial, rnd),
        x_val_V_D=val_x if has_val else None, y_val_V=val_y if has_val else None,
        epochs=train.epochs, draws_per_epoch=train.draws_per_epoch, batch_size=train.batch_size,
        lr=train.lr, weight_decay=train.weight_decay, patience=train.patience,
        eval_batch_size=train.eval_batch_size, device=device)
    t0 = time.perf_counter()
    test_acc, test_nll = evaluate(model, sim.test[0], sim.test[1], batch_size=train.eval_batch_size, device=device)
    val_acc = evaluate(model, val_x, val_y, batch_size=train.eval_batch_size, device=device)[0] if has_val else None
    record: dict[str, Any] = {
        "strategy": strat.name, "trial": trial, "round": rnd, "n_labels": int(labelled.size),
        "batch_size": strat.budget, "test_accuracy": test_acc, "test_nll": test_nll,
        "val_accuracy": val_acc, "epochs": fit.epochs, "best_epoch": fit.best_epoch,
        "train_seconds": fit.seconds, "eval_seconds": time.perf_counter() - t0,
        "acquire_seconds": None, "n_acquired": 0, "top_score": None, "stop_reason": None,
    }
    sim.records.append(record)
    _write_records(sim.out, sim.records)
    return model, record, fit


def _acquire(sim: _Sim, strat: StrategyConfig, trial: int, rnd: int, ledger: Ledger, model: Any, run_dir: Path,
             record: dict[str, Any]) -> tuple[str | None, np.ndarray]:
    """Select the round's batch through the coordinator; returns (stop reason or None, row ids)."""
    from alscale.runtime.coordinator import run_job, uses_model

    job, loop, pool, work = sim.job, sim.loop, sim.pool, sim.work
    t0 = time.perf_counter()
    labelled = ledger.row_ids
    budget = strat.budget
    if loop.stop.budget is not None:
        budget = min(budget, loop.stop.budget - labelled.size)
    pool_path, cand = pool.path, None
    if loop.subsample is not None:
        pool_path, cand = _subsample(sim, strat, trial, rnd, labelled)
    acq = job.replace(strategy=strat.replace(budget=int(budget), round=rnd))
    model_config = None
    if uses_model(acq):
        ckpt = work / "model.pt"
        _save_state(model, ckpt)
        assert job.model is not None
        model_config = job.model.replace(checkpoint=str(ckpt))
    ids = labelled if cand is None else np.intersect1d(labelled, pool.row_ids_N[cand])
    ids_path = work / "labeled.parquet"
    with AtomicFile(ids_path) as f:
        pq.write_table(pa.table({"row_id": ids}), f.open())
    acq = acq.replace(pool=pool_path, labeled=str(ids_path), loop=None, output=None, model=model_config,
                      seed=derive_seed(job.seed, _ACQUIRE, trial, rnd))
    result = run_job(acq, out_dir=run_dir / f"round-{rnd:04d}", force=True, progress=False, executor=sim.executor)
    picked = np.asarray(result.selection.indices_B, dtype=np.int64)
    record["acquire_seconds"] = time.perf_counter() - t0
    scores = np.asarray(result.selection.scores_B, dtype=np.float64)
    record["top_score"] = float(scores.max()) if scores.size else None
    return stop_after_scoring(loop.stop, record["top_score"]), picked


def _subsample(sim: _Sim, strat: StrategyConfig, trial: int, rnd: int, labelled: np.ndarray
               ) -> tuple[str, np.ndarray]:
    """``loop.subsample``: a keyed random subset of the unlabelled rows (plus the labelled ones
    for a diversity strategy, its anchors) written as the round's candidate pool; returns
    (its path, the pool positions it holds)."""
    from alscale.strategies import get_strategy, requirements
    from alscale.strategies.noise import keyed_uniform

    pool = sim.pool
    unlabelled = np.ones(pool.row_ids_N.size, bool)
    unlabelled[pool.positions(labelled)] = False
    cand = np.flatnonzero(unlabelled)
    if cand.size > sim.loop.subsample:
        keys = keyed_uniform(derive_seed(sim.job.seed, _SUBSAMPLE, trial), rnd, pool.row_ids_N[cand])
        cand = np.sort(cand[np.lexsort((pool.row_ids_N[cand], keys))[: sim.loop.subsample]])
    if requirements(get_strategy(strat.name).name, strat.options).needs_embeddings:
        cand = np.union1d(cand, pool.positions(labelled))  # labelled rows are the diversity anchors
    path = str(sim.work / "candidates.arrow")
    emb = None if pool.embeddings_N_E is None else pool.embeddings_N_E[cand]
    write_table(pool_table(pool.row_ids_N[cand], features_N_D=pool.features_N_D[cand], embeddings_N_D=emb),
                path, format="ipc")
    return path, cand


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with AtomicFile(path) as f:
        pacsv.write_csv(pa.Table.from_pylist(list(rows)), f.open())


def _write_records(out: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite the per-round tables (atomically) so a long simulation shows its progress."""
    table = pa.Table.from_pylist(records)
    with AtomicFile(out / "rounds.parquet") as f:
        pq.write_table(table, f.open())
    _write_csv(out / "rounds.csv", records)
