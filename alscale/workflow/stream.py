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
        return also(n, handler, [problem("stream.update_every retrains the model, but the job has no model")] * no_model)


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


def run_stream(job: JobSpec, *, out_dir: str | Path | None = None, force: bool = False,
               progress: bool | None = None) -> dict[str, Any]:
    """Run the stream (module docstring); returns a summary dict."""
    import pyarrow as pa
    from tqdm import tqdm

    from alscale.loop.ledger import Ledger
    from alscale.loop.oracle import HybridOracle, SimulatedOracle, make_oracle
    from alscale.pool import open_pool, read_shard, write_table
    from alscale.runtime.output import OutputLock
    from alscale.strategies import get_strategy
    from alscale.types import ShardSpec

    spec = parse_stream(job, job.stream)
    target = out_dir if out_dir is not None else job.output
    if target is None:
        raise AlscaleError("no output directory: set 'output' in the job or pass --out DIR")
    out = Path(target)
    if (out / "decisions.parquet").exists() and not force:
        raise AlscaleError(f"output {out} already holds a stream's decisions; pass --force or choose another --out")
    info = open_pool(job.pool)
    if (spec.oracle or {}).get("kind", "simulated") == "simulated" and not info.has_label:
        raise AlscaleError(f"pool {info.path} has no 'label' column for the simulated oracle; give stream.oracle "
                           "(command, http, human or hybrid)")

    def simulated() -> Any:
        if not info.has_label:
            raise AlscaleError(f"pool {info.path} has no 'label' column for a simulated oracle")
        d = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["label"])
        return SimulatedOracle(d.row_ids_N, d.labels_N, source=info.path)

    from alscale.workflow.labels import MediaRefs

    refs = MediaRefs(info.path) if info.media is not None else None

    def describe(row_ids: np.ndarray) -> list[dict[str, Any]]:
        if refs is None:
            return [{} for _ in range(row_ids.size)]
        return [{"image": ref} for ref in refs(row_ids)]
    score_fn = get_strategy(job.strategy.name).score_fn
    use_model = job.model is not None
    if not use_model and info.n_classes is None:
        raise AlscaleError(f"pool {info.path} has no 'log_probs' column and the job has no model")
    scorer = None
    if use_model:
        from alscale.runtime.coordinator import job_model_spec
        from alscale.scoring import Scorer

        if info.feature_dim is None:
            raise AlscaleError(f"pool {info.path} has no 'features' column for model {job.model.factory}")
        model_spec = job_model_spec(job)
        scorer = Scorer(model_spec, in_features=int(info.feature_dim), seed=job.seed)
    if progress is None:
        progress = sys.stderr.isatty()
    with OutputLock(out):
        if force:
            for name in ("decisions.parquet",):
                (out / name).unlink(missing_ok=True)
            if (out / "ledger").exists():
                import shutil

                shutil.rmtree(out / "ledger")
        ledger = Ledger(out / "ledger")
        oracle = make_oracle(spec.oracle, simulated=simulated, n_classes=info.n_classes, out_dir=out,
                             describe=describe)
        theta, spent, seen, updates = spec.threshold, 0, 0, 0
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("position", "row_id", "score", "threshold", "queried",
                                                             "spent", "oracle")}
        q_ids: list[int] = []
        q_labels: list[int] = []
        q_x: list[np.ndarray] = []
        flushed = 0
        chunk = job.runtime.chunk_rows
        with tqdm(total=info.n_rows, unit="rows", desc="stream", disable=not progress, file=sys.stderr) as bar:
            for lo in range(0, info.n_rows, chunk):
                hi = min(info.n_rows, lo + chunk)
                wanted = (["label"] if info.has_label else []) + (["features"] if use_model else ["log_probs"])
                d = read_shard(ShardSpec(info.path, 0, lo, hi), wanted, check_normalised=not use_model)
                lp = scorer.score(d.features_N_D)[0] if use_model else d.log_probs_N_K_C
                scores = score_fn(lp)
                queried, thr, theta, spent_after = decide(scores, threshold=theta, spent=spent, seen=seen, spec=spec)
                spent_so_far = spent + np.cumsum(queried)
                spent = spent_after
                answered_by = np.full(hi - lo, "", dtype=object)
                if queried.any():
                    ids = d.row_ids_N[queried]
                    if isinstance(oracle, HybridOracle):
                        labels = oracle.label_scored(ids, scores[queried])
                        answered_by[queried] = [r[1] for r in oracle.routes[-ids.size:]]
                    else:
                        labels = oracle.label(ids)
                        answered_by[queried] = oracle.name
                    q_ids += ids.tolist()
                    q_labels += labels.tolist()
                    if use_model:
                        q_x.append(np.asarray(d.features_N_D[queried], dtype=np.float32))
                for key, val in (("position", np.arange(lo, hi)), ("row_id", d.row_ids_N), ("score", scores),
                                 ("threshold", thr), ("queried", queried), ("spent", spent_so_far),
                                 ("oracle", answered_by)):
                    cols[key].append(np.asarray(val))
                seen = hi
                bar.update(hi - lo)
                if spec.update_every and len(q_ids) - flushed >= spec.update_every:
                    updates += 1
                    ledger.append(np.asarray(q_ids[flushed:]), np.asarray(q_labels[flushed:]), updates - 1,
                                  source=f"{oracle.name}")
                    flushed = len(q_ids)
                    _retrain(scorer, np.concatenate(q_x), np.asarray(q_labels), spec, job.seed + updates)
        if len(q_ids) > flushed:
            ledger.append(np.asarray(q_ids[flushed:]), np.asarray(q_labels[flushed:]), updates,
                          source=f"{oracle.name}")
        table = pa.table({k: (pa.array(np.concatenate(v).tolist(), pa.string()) if k == "oracle" else
                              np.concatenate(v)) if v else np.empty(0) for k, v in cols.items()})
        write_table(table, str(out / "decisions.parquet"), format="parquet")
    summary = {"rows": info.n_rows, "queried": spent, "fraction": spent / max(info.n_rows, 1),
               "budget": spec.budget, "final_threshold": theta, "model_updates": updates, "out_dir": str(out)}
    logger.info("stream: queried %d of %d rows (%.2f%%), %d model updates", spent, info.n_rows,
                100 * summary["fraction"], updates)
    return summary


def _retrain(scorer: Any, x_N_D: np.ndarray, y_N: np.ndarray, spec: StreamSpec, seed: int) -> None:
    """Train the scorer's model from scratch on every label so far (in place)."""
    from alscale.scoring.train import fresh_model, train_classifier

    t = spec.train
    model = fresh_model(scorer.spec, scorer.in_features, init_seed=seed)
    train_classifier(model, x_N_D, y_N, seed=seed, epochs=t.epochs, draws_per_epoch=t.draws_per_epoch,
                     batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, patience=None)
    scorer.model.load_state_dict(model.state_dict())
