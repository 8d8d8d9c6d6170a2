"""Stream-based selective sampling (``alscale stream JOB``): rows arrive in pool order and
each one is queried or skipped on the spot.

A job's ``stream:`` section::

    stream:
      budget: 0.05          # fraction of the stream to label (the pacing target)
      pacing: variable      # variable: Žliobaitė et al.'s variable-uncertainty threshold; fixed
      threshold: 0.5        # initial threshold on the strategy's score (higher = more informative)
      step: 0.01            # s: after a query θ ← θ(1 + s), after a skip θ ← θ(1 − s)
      update_every: null    # retrain the model from scratch on all labels every n labels (needs a model)
      train: {...}          # as loop.train (alscale.loop.spec), for update_every
      oracle: {kind: simulated}   # simulated | command | http | human | hybrid (alscale.loop.oracle)

The score is any score strategy (``strategy.name``: entropy, margin, BALD, ...) of the job's
model (or of the pool's ``log_probs``). Row t is queried when the labels spent so far are
below ``budget · t`` and its score is at least θ (Žliobaitė, Bifet, Pfahringer & Holmes,
"Active learning with drifting streaming data", IEEE TNNLS 2014: variable uncertainty; with
``pacing: fixed`` θ stays put). Queried rows get their label from the oracle — by default
the pool's ``label`` column (simulated); a program, a loopback service, people, or a hybrid
that routes rows scoring below a threshold to a machine oracle and the rest to people
(:func:`alscale.loop.oracle.make_oracle`) — and the labels are appended to the ledger
``OUT/ledger`` each time the model is updated and at the end. Every decision goes to
``OUT/decisions.parquet``: position, row_id, score, threshold, queried, spent, and the oracle
that answered.

Rows are read in order, chunk by chunk (``runtime.chunk_rows``); decisions within a chunk use
the model as it was when the chunk was scored, so ``update_every`` takes effect at the next
chunk (a chunk of 1 row gives row-by-row updates).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ValidationInfo, field_validator

from alscale.config import Section, also, check_section, fact, problem, setting
from alscale.errors import AlscaleError, JobError
from alscale.jobspec import JobSpec, null_is
from alscale.loop.spec import TrainConfig

logger = logging.getLogger(__name__)

PACINGS = ("variable", "fixed")
#: Validation-context fact: whether the job has a model.
HAS_MODEL = "has_model"


class StreamSpec(Section):
    """A job's ``stream:`` section (module docstring)."""

    valid_names = "declared"

    budget: float = setting(None, "the fraction of rows to label, in (0, 1]", gt=0, le=1, validate_default=True)
    pacing: Literal[PACINGS] = setting("variable", "one of " + ", ".join(PACINGS))  # type: ignore[valid-type]
    threshold: float = setting(0.5, "a number")
    step: float = setting(0.01, "in [0, 1)", ge=0, lt=1)
    update_every: int | None = setting(None, "a number of labels >= 1 or null", ge=1)
    #: as loop.train, for update_every
    train: Annotated[TrainConfig, null_is({})] = setting(default_factory=TrainConfig, must="a mapping")
    #: alscale.loop.oracle.make_oracle's mapping
    oracle: dict | None = setting(None, "a mapping with a kind (simulated, command, http, human, hybrid)")

    @field_validator("update_every", mode="wrap")
    @classmethod
    def _retraining_needs_a_model(cls, n: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> int | None:
        no_model = n is not None and fact(info, HAS_MODEL) is False
        missing = problem("stream.update_every retrains the model, but the job has no model")
        return also(n, handler, [missing] * no_model)


def parse_stream(job: JobSpec, raw: dict[str, Any] | None) -> StreamSpec:
    """Validate a job's ``stream:`` section (all errors at once)."""
    if not isinstance(raw, dict):
        raise JobError(f"job {job.source}: a stream job needs a 'stream:' mapping (budget, pacing, threshold, ...)")
    from alscale.strategies import get_strategy

    info = get_strategy(job.strategy.name)
    trail = [] if info.kind == "score" else [
        f"stream selection scores rows one by one: strategy.name must be a score strategy "
        f"(entropy, margin, bald, ...), not {info.name}"]
    return check_section(StreamSpec, raw, source=str(job.source), prefix="stream",
                         context={HAS_MODEL: job.model is not None}, trail=trail)


def decide(scores_B: np.ndarray, *, threshold: float, spent: int, seen: int, spec: StreamSpec
           ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """The query decisions for consecutive rows with ``scores_B`` (pure): returns
    (queried [B] bool, threshold before each row [B], threshold after, labels spent after)."""
    queried = np.zeros(scores_B.shape[0], dtype=bool)
    thresholds = np.empty(scores_B.shape[0])
    theta = float(threshold)
    for i, s in enumerate(scores_B.tolist()):
        thresholds[i] = theta
        t = seen + i + 1
        if spent < spec.budget * t and s >= theta:
            queried[i] = True
            spent += 1
            if spec.pacing == "variable":
                theta *= 1.0 + spec.step
        elif spec.pacing == "variable" and spent < spec.budget * t:
            theta *= 1.0 - spec.step
    return queried, thresholds, theta, spent


@dataclass
class _Stream:
    """A stream in progress: what it reads and asks, and what it has decided so far."""

    job: JobSpec
    spec: StreamSpec
    info: Any  # alscale.pool.PoolInfo
    scorer: Any  # alscale.scoring.Scorer, or None: the pool's log_probs are the model outputs
    score_fn: Callable[[np.ndarray], np.ndarray]
    oracle: Any
    ledger: Any  # alscale.loop.ledger.Ledger
    theta: float
    spent: int = 0
    seen: int = 0
    updates: int = 0
    flushed: int = 0  # queried labels already in the ledger
    columns: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in _DECISION_COLUMNS})
    q_ids: list[int] = field(default_factory=list)
    q_labels: list[int] = field(default_factory=list)
    q_x: list[np.ndarray] = field(default_factory=list)


_DECISION_COLUMNS = ("position", "row_id", "score", "threshold", "queried", "spent", "oracle")


def run_stream(job: JobSpec, *, out_dir: str | Path | None = None, force: bool = False,
               progress: bool | None = None) -> dict[str, Any]:
    """Run the stream (module docstring); returns a summary dict."""
    from tqdm import tqdm

    from alscale.pool import open_pool, write_table
    from alscale.runtime.output import OutputLock
    from alscale.strategies import get_strategy

    spec = parse_stream(job, job.stream)
    out = _output_dir(job, out_dir, force)
    info = open_pool(job.pool)
    if (spec.oracle or {}).get("kind", "simulated") == "simulated" and not info.has_label:
        raise AlscaleError(f"pool {info.path} has no 'label' column for the simulated oracle; give stream.oracle "
                           "(command, http, human or hybrid)")
    score_fn = get_strategy(job.strategy.name).score_fn
    scorer = _scorer(job, info)
    if progress is None:
        progress = sys.stderr.isatty()
    with OutputLock(out):
        run = _start(job, spec, info, scorer, score_fn, out, force)
        with tqdm(total=info.n_rows, unit="rows", desc="stream", disable=not progress, file=sys.stderr) as bar:
            for lo in range(0, info.n_rows, job.runtime.chunk_rows):
                hi = min(info.n_rows, lo + job.runtime.chunk_rows)
                _decide_chunk(run, lo, hi)
                bar.update(hi - lo)
                if spec.update_every and len(run.q_ids) - run.flushed >= spec.update_every:
                    _update_model(run)
        if len(run.q_ids) > run.flushed:
            _flush(run, run.updates)
        write_table(_decisions(run), str(out / "decisions.parquet"), format="parquet")
    summary = {"rows": info.n_rows, "queried": run.spent, "fraction": run.spent / max(info.n_rows, 1),
               "budget": spec.budget, "final_threshold": run.theta, "model_updates": run.updates, "out_dir": str(out)}
    logger.info("stream: queried %d of %d rows (%.2f%%), %d model updates", run.spent, info.n_rows,
                100 * summary["fraction"], run.updates)
    return summary


def _output_dir(job: JobSpec, out_dir: str | Path | None, force: bool) -> Path:
    target = out_dir if out_dir is not None else job.output
    if target is None:
        raise AlscaleError("no output directory: set 'output' in the job or pass --out DIR")
    out = Path(target)
    if (out / "decisions.parquet").exists() and not force:
        raise AlscaleError(f"output {out} already holds a stream's decisions; pass --force or choose another --out")
    return out


def _scorer(job: JobSpec, info: Any) -> Any:
    """The job's model as a scorer of the pool's features; None when the pool's log_probs are used."""
    if job.model is None:
        if info.n_classes is None:
            raise AlscaleError(f"pool {info.path} has no 'log_probs' column and the job has no model")
        return None
    from alscale.runtime.coordinator import job_model_spec
    from alscale.scoring import Scorer

    if info.feature_dim is None:
        raise AlscaleError(f"pool {info.path} has no 'features' column for model {job.model.factory}")
    return Scorer(job_model_spec(job), in_features=int(info.feature_dim), seed=job.seed)


def _start(job: JobSpec, spec: StreamSpec, info: Any, scorer: Any, score_fn: Any, out: Path, force: bool) -> _Stream:
    """Under the output's lock: clear an earlier stream (``force``), open the ledger and the oracle."""
    from alscale.loop.ledger import Ledger
    from alscale.loop.oracle import SimulatedOracle, make_oracle
    from alscale.pool import read_shard
    from alscale.types import ShardSpec
    from alscale.workflow.labels import MediaRefs

    if force:
        (out / "decisions.parquet").unlink(missing_ok=True)
        if (out / "ledger").exists():
            import shutil

            shutil.rmtree(out / "ledger")

    def simulated() -> Any:
        if not info.has_label:
            raise AlscaleError(f"pool {info.path} has no 'label' column for a simulated oracle")
        d = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["label"])
        return SimulatedOracle(d.row_ids_N, d.labels_N, source=info.path)

    refs = MediaRefs(info.path) if info.media is not None else None

    def describe(row_ids: np.ndarray) -> list[dict[str, Any]]:
        if refs is None:
            return [{} for _ in range(row_ids.size)]
        return [{"image": ref} for ref in refs(row_ids)]

    ledger = Ledger(out / "ledger")
    oracle = make_oracle(spec.oracle, simulated=simulated, n_classes=info.n_classes, out_dir=out, describe=describe)
    return _Stream(job, spec, info, scorer, score_fn, oracle, ledger, spec.threshold)


def _decide_chunk(run: _Stream, lo: int, hi: int) -> None:
    """Score rows ``lo:hi``, decide each, ask the oracle about the queried ones."""
    from alscale.loop.oracle import HybridOracle
    from alscale.pool import read_shard
    from alscale.types import ShardSpec

    info, use_model = run.info, run.scorer is not None
    wanted = (["label"] if info.has_label else []) + (["features"] if use_model else ["log_probs"])
    d = read_shard(ShardSpec(info.path, 0, lo, hi), wanted, check_normalised=not use_model)
    scores = run.score_fn(run.scorer.score(d.features_N_D)[0] if use_model else d.log_probs_N_K_C)
    queried, thr, run.theta, spent_after = decide(scores, threshold=run.theta, spent=run.spent, seen=run.seen,
                                                  spec=run.spec)
    spent_so_far = run.spent + np.cumsum(queried)
    run.spent = spent_after
    answered_by = np.full(hi - lo, "", dtype=object)
    if queried.any():
        ids = d.row_ids_N[queried]
        if isinstance(run.oracle, HybridOracle):
            labels = run.oracle.label_scored(ids, scores[queried])
            answered_by[queried] = [r[1] for r in run.oracle.routes[-ids.size:]]
        else:
            labels = run.oracle.label(ids)
            answered_by[queried] = run.oracle.name
        run.q_ids += ids.tolist()
        run.q_labels += labels.tolist()
        if use_model:
            run.q_x.append(np.asarray(d.features_N_D[queried], dtype=np.float32))
    for key, val in zip(_DECISION_COLUMNS, (np.arange(lo, hi), d.row_ids_N, scores, thr, queried, spent_so_far,
                                            answered_by)):
        run.columns[key].append(np.asarray(val))
    run.seen = hi


def _flush(run: _Stream, round: int) -> None:
    """Append the labels not yet in the ledger as ledger round ``round``."""
    run.ledger.append(np.asarray(run.q_ids[run.flushed:]), np.asarray(run.q_labels[run.flushed:]), round,
                      source=f"{run.oracle.name}")
    run.flushed = len(run.q_ids)


def _update_model(run: _Stream) -> None:
    """``update_every`` labels more: into the ledger, and the model retrained on all of them."""
    run.updates += 1
    _flush(run, run.updates - 1)
    _retrain(run.scorer, np.concatenate(run.q_x), np.asarray(run.q_labels), run.spec, run.job.seed + run.updates)


def _decisions(run: _Stream) -> Any:
    """``decisions.parquet``'s table."""
    import pyarrow as pa

    return pa.table({k: (pa.array(np.concatenate(v).tolist(), pa.string()) if k == "oracle" else
                         np.concatenate(v)) if v else np.empty(0) for k, v in run.columns.items()})


def _retrain(scorer: Any, x_N_D: np.ndarray, y_N: np.ndarray, spec: StreamSpec, seed: int) -> None:
    """Train the scorer's model from scratch on every label so far (in place)."""
    from alscale.scoring.train import fresh_model, train_classifier

    t = spec.train
    model = fresh_model(scorer.spec, scorer.in_features, init_seed=seed)
    train_classifier(model, x_N_D, y_N, seed=seed, epochs=t.epochs, draws_per_epoch=t.draws_per_epoch,
                     batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, patience=None)
    scorer.model.load_state_dict(model.state_dict())
