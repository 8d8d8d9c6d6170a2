"""The coordinator: plan shards, start workers, score, select over all shards, write.

Phases (timed, in the manifest): ``validate`` (pool schema and row ids, labelled set, a
trial forward of the model), ``startup`` (executor and workers), ``read`` (workers
load their shards), ``score`` (model forward; 0 when the pool holds log-probs),
``select`` (acquisition scores and the exact global merge), ``write`` (outputs).
``rows_per_s`` counts the pool's rows over every phase but ``startup``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from alscale.errors import AlscaleError
from alscale.jobspec import JobSpec
from alscale.pool import PoolInfo, open_pool, plan_shards, read_labeled
from alscale.runtime import output
from alscale.strategies import FanoutShards, get_strategy, requirements, run_strategy
from alscale.types import PhaseTimings, Selection

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    selection: Selection
    out_dir: str  # a local path or a URI
    manifest: dict[str, Any]


@contextmanager
def _phase(timings: PhaseTimings, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings.add(name, time.perf_counter() - t0)


def embedding_source(job: JobSpec) -> str | None:
    """Where the strategy's embeddings come from: ``"model"``, ``"column"``, or None (not needed).

    ``strategy.embedding: auto`` means the model's penultimate layer when the job has a
    model, else the pool's ``embedding`` column.
    """
    if not (requirements(job.strategy.name, job.strategy.options).needs_embeddings or job.strategy.seals):
        return None
    source = job.strategy.embedding
    if source == "auto":
        source = "model" if job.model is not None else "column"
    return source


def uses_model(job: JobSpec) -> bool:
    """Whether the job runs its model: not when the strategy needs embeddings only and
    takes them from the pool's ``embedding`` column."""
    if job.model is None:
        return False
    needs = requirements(job.strategy.name, job.strategy.options)
    return needs.needs_log_probs or embedding_source(job) == "model"


def check_job_against_pool(job: JobSpec, info: PoolInfo) -> list[str]:
    """What the job needs from the pool's columns; returns the problems (empty when fine)."""
    problems: list[str] = []
    name = get_strategy(job.strategy.name).name
    needs = requirements(name, job.strategy.options)
    source = embedding_source(job)
    if source == "column" and info.embedding_dim is None:
        problems.append(
            f"strategy {name} takes embeddings from the pool's 'embedding' column (strategy.embedding: "
            f"{job.strategy.embedding}) but pool {info.path} has none; add the column, or a model and "
            "strategy.embedding: model"
        )
    if source == "column" and job.model is not None and needs.needs_log_probs:
        problems.append(
            f"strategy {name} with a model and strategy.embedding: column is not supported yet (the model's "
            "log-probs and the pool's embedding column in one job); use strategy.embedding: model, or drop the "
            "model and give the pool 'log_probs' and 'embedding' columns"
        )
    problems += _group_column_problems(job, info)
    if uses_model(job):
        if info.feature_dim is None and info.media is None:
            problems.append(
                f"pool {info.path} has no 'features', 'image' or 'path' column for model {job.model.factory}; add "
                "one, or set model: null and provide a 'log_probs' column"
            )
    else:
        if needs.needs_log_probs and info.n_classes is None:
            problems.append(
                f"pool {info.path} has no 'log_probs' column and the job has no model; strategy {name} "
                "needs one of them"
            )
        elif needs.needs_log_probs and (info.n_samples or 1) < needs.min_samples:
            problems.append(
                f"strategy {name} needs K >= {needs.min_samples} samples but pool {info.path} column "
                f"'log_probs' has K = {info.n_samples}; use a strategy for single-pass outputs (e.g. entropy)"
            )
    return problems


def job_model_spec(job: JobSpec) -> Any:
    """The job's ``model`` section as a :class:`alscale.scoring.ModelSpec`."""
    from alscale.scoring import ModelSpec

    m = job.model
    assert m is not None
    return ModelSpec(
        factory=m.factory,
        kwargs=dict(m.kwargs),
        checkpoint=m.checkpoint,
        mc_samples=m.mc_samples,
        batch_size=m.batch_size,
        device=m.device,
        transform=m.transform,
        decode_threads=m.decode_threads,
    )


def make_executor(job: JobSpec, n_workers: int) -> Any:
    if job.runtime.executor == "local":
        from alscale.runtime.local import LocalExecutor

        return LocalExecutor(n_workers)
    from alscale.runtime.ray_executor import RayExecutor
    from alscale.runtime.shipping import strategy_sources

    specs = [get_strategy(job.strategy.name)]  # and the score strategies it runs on the workers
    specs += [get_strategy(c) for c in requirements(job.strategy.name, job.strategy.options).components]
    return RayExecutor(
        n_workers,
        address=job.runtime.address,
        cpus_per_worker=job.runtime.cpus_per_worker,
        gpus_per_worker=job.runtime.gpus_per_worker,
        startup_timeout_s=job.runtime.startup_timeout_s,
        py_modules=sorted({p for s in specs for p in strategy_sources(s)}),
    )


@dataclass
class RunPlan:
    """What validation established about a job before any worker starts."""

    job: JobSpec
    info: PoolInfo
    labeled: np.ndarray  # row_ids of the labelled set
    model_spec: Any  # alscale.scoring.ModelSpec, or None when the job runs no model
    in_features: int  # the model's input width D
    stream: Any  # alscale.runtime.memory's plan under runtime.memory_budget, or None
    out_path: str
    resume: bool
    cache_record: dict[str, Any] | None = None  # the chunk cache's fingerprint (runtime.cache)
    cache_from: tuple[str, ...] = ()  # earlier runs' output directories whose caches are read too
    hasher: Any = None  # alscale.runtime.inputs.PoolHasher: the pool files' sha256, computed while the job runs


@dataclass
class _Selected:
    """What the selection phase gives the manifest."""

    selection: Selection
    n_labeled_in_pool: int
    candidates: dict[str, Any] | None  # the SEALS filter's record
    quotas: dict[str, Any] | None  # class quotas' record
    round_trips: int


def run_job(
    job: JobSpec,
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
    progress: bool | None = None,
    executor: Any = None,
    resume: bool = False,
    cache_from: Sequence[str] = (),
) -> RunResult:
    """Run one acquisition job end to end and write its output directory.

    Every check that can fail on input (job, pool schema, row ids, labelled set, model
    build) runs before any worker starts; on error nothing is written.

    ``executor``: an open executor with one worker per shard of the job's plan, reused (and
    left open) instead of starting one; the active-learning loop passes its own so that Ray
    and the worker processes start once per simulation, not once per round.

    ``resume``: continue an interrupted run in ``out_dir``: chunks whose cached model
    outputs are valid (:mod:`alscale.runtime.cache`) are not scored again; missing, corrupt
    or foreign caches are scored and rewritten. Without it, earlier caches are removed.

    ``cache_from``: output directories of earlier runs (e.g. the last round's) whose cached
    model outputs are read too (never written): rows they hold for the same model and pool
    files are not scored again (a pool that has grown scores only its new files).
    """
    started = datetime.now(timezone.utc)
    timings = PhaseTimings()
    target = out_dir if out_dir is not None else job.output
    if target is None:
        raise AlscaleError("no output directory: set 'output' in the job or pass --out DIR")
    out_path = str(target)
    output.check_output_dir(out_path, force=force, resume=resume)
    with _phase(timings, "validate"):
        plan = validate_run(job, out_path, resume)
    from alscale.runtime.inputs import PoolHasher

    plan.cache_from = tuple(cache_from)
    plan.hasher = PoolHasher(plan.info)  # the pool files' sha256, on a thread while the job runs (stops if it fails)
    # One job per output directory: a second one refuses instead of interleaving.
    with output.OutputLock(out_path), plan.hasher:
        output.check_output_dir(out_path, force=force, resume=resume)
        _prepare_output(plan, timings)
        return _execute(plan, timings, started, progress, executor)


def validate_run(job: JobSpec, out_path: str, resume: bool = False) -> RunPlan:
    """Every check against the pool, the labelled set and the model (built and run on the
    pool's first rows) that can fail on input; nothing is written."""
    info = open_pool(job.pool)
    problems = check_job_against_pool(job, info)
    if problems:
        raise AlscaleError("; ".join(problems))
    labeled = read_labeled(job.labeled) if job.labeled else np.empty(0, np.int64)
    _check_labeled_in_pool(labeled, job.labeled, info)
    model_spec = None
    in_features = int(info.feature_dim or 0)
    dims = (info.n_samples or 1, info.n_classes, info.embedding_dim)  # K, C, E of what is scored
    if uses_model(job):
        model_spec = job_model_spec(job)
        in_features, n_classes, emb_dim = _dry_build(model_spec, info, job.seed, embedding_source(job) == "model")
        dims = (model_spec.mc_samples, n_classes, emb_dim)
    elif job.model is not None:
        needs = requirements(job.strategy.name, job.strategy.options)
        why = ("takes its embeddings from the pool's 'embedding' column" if needs.needs_embeddings
               else "needs no model outputs")
        logger.warning("model %s is not used: strategy %s %s", job.model.factory, job.strategy.name, why)
    stream = _stream_plan(job, info, in_features, dims) if job.runtime.memory_budget else None
    return RunPlan(job, info, labeled, model_spec, in_features, stream, out_path, resume)


def _prepare_output(plan: RunPlan, timings: PhaseTimings) -> None:
    """Under the output's lock: the chunk cache's fingerprint and the earlier runs it reads
    (``--cache-from``), and what earlier runs left here (their caches unless resuming, the
    files of an interrupted write)."""
    if plan.model_spec is not None and plan.job.runtime.cache:
        from alscale.runtime.cache import fingerprint

        with _phase(timings, "hash"):  # the cache keeps rows by the content of their pool files
            plan.cache_record = fingerprint(plan.info, plan.model_spec, plan.job.seed, plan.in_features,
                                            plan.hasher.result())
        plan.cache_record["sources"] = _cache_sources(plan.cache_from, plan.out_path)
    elif plan.cache_from:
        raise AlscaleError("--cache-from reads cached model outputs, but this job scores nothing with a model "
                           "(or runtime.cache is false); drop --cache-from")
    if not plan.resume:
        from alscale.runtime.cache import remove_caches

        remove_caches(output.output_location(plan.out_path))
    for name in output.remove_partial_files(plan.out_path):
        logger.info("output %s: removed %s, left by an interrupted write", plan.out_path, name)


def _execute(plan: RunPlan, timings: PhaseTimings, started: datetime, progress: bool | None, executor: Any
             ) -> RunResult:
    """The phases after validation: start-up, read, score, select, write."""
    job, info = plan.job, plan.info
    shard_plan = plan_shards(job.pool, info.n_rows, job.runtime.shards)
    if progress is None:
        progress = sys.stderr.isatty()
    owns_executor = executor is None
    if executor is not None and executor.n_workers != len(shard_plan):
        raise AlscaleError(
            f"the executor has {executor.n_workers} workers but pool {info.path} is planned as {len(shard_plan)} "
            "shards; give the pool at least runtime.shards rows"
        )
    with _phase(timings, "startup"):
        if executor is None:
            executor = make_executor(job, len(shard_plan))
    try:
        cache_info = _load_and_score(plan, executor, shard_plan, timings, progress)
        selected = _select(plan, FanoutShards(executor), timings, progress)
        executor_info = executor.describe()
    finally:
        if owns_executor:
            executor.close()
    inputs = None
    if plan.hasher is not None:
        from alscale.runtime.inputs import input_versions

        with _phase(timings, "hash"):  # only the wait for a hashing that outlasted the job
            inputs = input_versions(job, info, plan.hasher.result(), embedding_source(job), plan.cache_record)
        inputs["hash_seconds"] = round(plan.hasher.seconds, 6)
    manifest = _manifest(plan, shard_plan, selected, executor_info, cache_info, inputs, started)
    _write(plan.out_path, selected.selection, manifest, timings, info.n_rows, job.strategy.round)
    logger.info("selected %d rows with %s in %.2f s", len(selected.selection), selected.selection.strategy,
                timings.total)
    return RunResult(selection=selected.selection, out_dir=plan.out_path, manifest=manifest)


def _load_and_score(plan: RunPlan, executor: Any, shard_plan: list, timings: PhaseTimings, progress: bool
                    ) -> dict[str, Any] | None:
    """Start the model in every worker, load the shards, score them chunk by chunk (or stream
    the pool's outputs through the workers); returns the manifest's cache record."""
    job, model_spec, stream, n = plan.job, plan.model_spec, plan.stream, len(shard_plan)
    with _phase(timings, "startup"):  # import torch and build the model in every worker
        if model_spec is not None:
            executor.map("prepare_model", [(model_spec, job.seed, plan.in_features)] * n)
    with _phase(timings, "read"):
        columns, groups = _columns_needed(job, plan.info), _group_columns(job)
        executor.map("load", [(spec, columns, model_spec is not None, True, stream, groups) for spec in shard_plan])
    chunk_rows = stream.chunk_rows if stream is not None else job.runtime.chunk_rows
    if model_spec is None and stream is not None:  # stream the pool's outputs through the workers
        with _phase(timings, "read"):
            _score_all(executor, shard_plan, chunk_rows, progress, desc="reading")
    cache_info = None
    with _phase(timings, "score"):
        if model_spec is not None:
            if plan.cache_record is not None:
                executor.map("use_cache", [(plan.out_path, plan.cache_record, plan.resume)] * n)
            _score_all(executor, shard_plan, chunk_rows, progress)
            if plan.cache_record is not None:
                cache_info = _cache_summary(executor.map("cache_stats", [()] * n), plan.cache_record)
    return cache_info


def _select(plan: RunPlan, shards: FanoutShards, timings: PhaseTimings, progress: bool) -> _Selected:
    """The selection over all shards: the labelled rows out, the SEALS filter, then the
    strategy (through the class-quota greedy when the job sets quotas)."""
    from alscale.strategies.progress import reporting

    job, strategy = plan.job, plan.job.strategy
    bar = _progress_bar(progress, total=strategy.budget, unit="picks", desc="selecting")
    with _phase(timings, "select"), bar, reporting(bar.update):
        n_labeled_in_pool = shards.exclude(plan.labeled)
        candidates = _apply_seals(shards, strategy) if strategy.seals else None
        quota_info = None
        if strategy.quotas:
            selection, quota_info = _select_with_quotas(shards, job)
        else:
            options = _strategy_options(job, plan.info, plan.labeled, plan.model_spec, plan.in_features)
            selection = run_strategy(shards, strategy.name, strategy.budget, options=options, seed=job.seed,
                                     round=strategy.round)
    return _Selected(selection, int(n_labeled_in_pool), candidates, quota_info, shards.round_trips)


def _apply_seals(shards: FanoutShards, strategy: Any) -> dict[str, Any]:
    """Restrict the candidates to the SEALS filter's; returns the manifest's record."""
    from alscale.strategies.seals import apply_seals

    kept_info = None
    if strategy.seals_index or strategy.seals_mode != "exact":  # issue 16: kept / approximate
        from alscale.runtime.seals_store import apply_seals_kept

        n_cand, kept_info = apply_seals_kept(shards, strategy.seals, strategy.seals_index, strategy.seals_mode)
    else:
        n_cand = apply_seals(shards, strategy.seals)
    logger.info("SEALS: %s candidate rows", "all (nothing labelled)" if n_cand < 0 else n_cand)
    return {"filter": "seals", "k": strategy.seals, "rows": None if n_cand < 0 else n_cand,
            **({"kept": kept_info} if kept_info else {})}


def _select_with_quotas(shards: FanoutShards, job: JobSpec) -> tuple[Selection, dict[str, Any]]:
    """The strategy under class quotas; returns the selection and the manifest's record."""
    from alscale.strategies.quotas import select_with_quotas

    strategy = job.strategy
    qr = select_with_quotas(shards, strategy.name, strategy.budget, strategy.quotas, options=strategy.options,
                            seed=job.seed, round=strategy.round)
    quota_info = {**strategy.quotas, "picks_per_class": qr.counts, "unmet": {str(k): v for k, v in qr.unmet.items()}}
    if qr.groups is not None:  # by a pool column: the picks of each of its values
        quota_info["picks_per_group"] = {str(v): n for v, n in zip(qr.groups, qr.counts)}
    return qr.selection, quota_info


def _manifest(plan: RunPlan, shard_plan: list, selected: _Selected, executor_info: dict[str, Any],
              cache_info: dict[str, Any] | None, inputs: dict[str, Any] | None, started: datetime) -> dict[str, Any]:
    """``manifest.json``: the validated job, the pool, the shard plan, the runtime, the
    selection's provenance, the inputs' versions (sha256 of the pool files ...), the software
    versions; the phase seconds are added by :func:`_write`."""
    job, info, stream = plan.job, plan.info, plan.stream
    return {
        "job": job.to_dict(),
        "job_file": job.source,
        "seed": job.seed,
        "round": job.strategy.round,
        "strategy": selected.selection.strategy,
        "budget": job.strategy.budget,
        "n_selected": len(selected.selection),
        "pool": {"path": info.path, "format": info.format, "n_rows": info.n_rows, "columns": list(info.columns),
                 "n_labeled": selected.n_labeled_in_pool},
        "shard_plan": [[s.start, s.stop] for s in shard_plan],
        "runtime": executor_info,
        "round_trips": selected.round_trips,
        "candidates": selected.candidates,
        "quotas": selected.quotas,
        "selection": None if selected.selection.info is None else dict(selected.selection.info),
        "resumed": bool(plan.resume),
        "memory": None if stream is None else {
            "budget_bytes": job.runtime.memory_budget, "streamed": True, "chunk_rows": stream.chunk_rows,
            "kept": {"base_score": stream.base_score, "log_probs": stream.keep_log_probs,
                     "embeddings": stream.keep_embeddings},
            "resident_bytes_per_row": stream.resident_bytes_per_row},
        "cache": cache_info,
        "inputs": inputs,
        "started_utc": started.isoformat(),
        "versions": output.versions(),
        "git_revision": output.git_revision(),
        "machine": output.machine(),
    }


def _write(out_path: str, selection: Selection, manifest: dict[str, Any], timings: PhaseTimings, n_rows: int,
           round: int) -> None:
    """The selection, then the manifest (a finished output is the one with its manifest)."""
    # The manifest cannot time its own write: on disk, "write" covers the selection file
    # only; the returned manifest has the full figure.
    try:
        with _phase(timings, "write"):
            output.write_selection(out_path, selection, round)
        _add_throughput(manifest, timings, n_rows)
        with _phase(timings, "write"):
            output.write_manifest(out_path, manifest)
    except BaseException:  # a full disk, a kill: no selection without its manifest stays behind
        output.discard_unfinished(out_path)
        raise
    _add_throughput(manifest, timings, n_rows)


def _cache_sources(dirs: Sequence[str], out_path: str) -> list[str]:
    """The ``--cache-from`` directories, checked: each holds a cache of an earlier run."""
    from alscale.runtime.cache import has_caches

    out = []
    for d in dirs:
        loc = output.output_location(d)
        if loc.canonical == output.output_location(out_path).canonical:
            raise AlscaleError(f"--cache-from {d} is the output directory itself; use --resume to reuse its caches")
        if not has_caches(loc):
            raise AlscaleError(f"--cache-from {d}: no cached model outputs there ({loc.display}/cache has no records); "
                               "give the output directory of an earlier run with a model and runtime.cache: true")
        out.append(loc.canonical)
    return out


def _strategy_options(job: JobSpec, info: PoolInfo, labeled: np.ndarray, model_spec: Any, in_features: int
                      ) -> dict[str, Any]:
    """The job's strategy options, plus what the strategy's spec says it takes from the job
    rather than the file: the model's last linear layer (``needs.head``) and the labelled
    rows' labels (``needs.labels``)."""
    opts = dict(job.strategy.options)
    spec = get_strategy(job.strategy.name)
    if spec.needs.head and model_spec is not None:
        head = _model_head(spec.name, model_spec, in_features, job.seed, required=spec.needs.head != "optional")
        if head is not None:
            opts["head"] = head
    if spec.needs.labels:
        opts["labels"] = _labeled_labels(job, info, labeled)
    return opts


def _model_head(strategy: str, model_spec: Any, in_features: int, seed: int, required: bool = True
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """The model's last linear layer (attribute ``head``) as float64 (weight, bias).

    ``required=False`` (``needs.head == "optional"``): a model without a ``head`` attribute
    whose only linear layer is a single ``nn.Linear`` (e.g. the builtin ``linear`` model, its
    own head) gives that layer, and any other model without a head gives None."""
    import torch

    from alscale.scoring import Scorer

    model = Scorer(model_spec, in_features=in_features, seed=seed).model
    head = getattr(model, "head", None)
    if not required and not isinstance(head, torch.nn.Linear):
        linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if len(linear) != 1 or any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
            return None
        head = linear[0]
    if not isinstance(head, torch.nn.Linear):
        raise AlscaleError(f"strategy {strategy} needs the model's last linear layer as an attribute 'head' "
                           f"(nn.Linear); model {model_spec.factory} has none")
    return head.weight.detach().double().cpu().numpy(), head.bias.detach().double().cpu().numpy()


def _labeled_labels(job: JobSpec, info: PoolInfo, labeled: np.ndarray) -> Any:
    """(row_ids, labels) of the labelled rows: from the labelled set's file, else the pool's
    ``label`` column; None when neither has them."""
    from alscale.pool.labeled import read_labels

    got = read_labels(job.labeled) if job.labeled else None
    if got is None and info.has_label and labeled.size:
        from alscale.pool import read_shard
        from alscale.types import ShardSpec

        d = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["label"])
        hit = np.isin(d.row_ids_N, labeled)
        got = (d.row_ids_N[hit], d.labels_N[hit])
    return got


def _cache_summary(per_worker: list[dict[str, Any]], record: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``cache`` entry: the fingerprint and, over all workers, the chunks
    (pool row ranges) reused from an earlier run, scored now, and rejected (with reasons)."""
    out: dict[str, Any] = {"dir": "cache", "fingerprint": record["sha256"], "reused": [], "computed": [],
                           "rejected": []}
    for stats in per_worker:
        for key in ("reused", "computed", "rejected"):
            out[key].extend(stats.get(key, []))
        if stats.get("recovered"):  # finished chunks of a worker that died, read back after its restart
            out.setdefault("recovered", []).extend(stats["recovered"])
    out["reused"].sort()
    out["computed"].sort()
    if "recovered" in out:
        out["recovered"].sort()
    if out["rejected"]:
        logger.warning("%d cached chunk(s) were invalid and scored again", len(out["rejected"]))
    if out["reused"]:
        logger.info("resumed: %d chunk(s) from cache, %d scored", len(out["reused"]), len(out["computed"]))
    return out


def _add_throughput(manifest: dict[str, Any], timings: PhaseTimings, n_rows: int) -> None:
    manifest["phase_seconds"] = {k: round(v, 6) for k, v in timings.seconds.items()}
    work = sum(v for k, v in timings.seconds.items() if k != "startup")
    manifest["rows_per_s"] = n_rows / work if work > 0 else None


def _check_labeled_in_pool(labeled: np.ndarray, path: str | None, info: PoolInfo) -> None:
    """Every labelled row_id must be a row of the pool (a labelled set of another pool is a mistake)."""
    if labeled.size == 0:
        return
    from alscale.pool import read_shard
    from alscale.types import ShardSpec

    pool_ids = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), []).row_ids_N
    absent = labeled[~np.isin(labeled, pool_ids)]
    if absent.size:
        raise AlscaleError(
            f"labelled set {path}: {absent.size} of its {labeled.size} row_ids are not in pool {info.path} (first: "
            f"{int(absent[0])}); give the labelled set of this pool, or drop those ids"
        )


def _group_columns(job: JobSpec) -> list[str]:
    """Pool metadata columns the workers read for the selection: ``strategy.quotas.by`` and
    those the strategy's needs name (a composed selection's filters, scores and constraints)."""
    from alscale.strategies.quotas import quota_column

    by = quota_column(job.strategy.quotas)
    needed = requirements(job.strategy.name, job.strategy.options).columns
    return list(dict.fromkeys(([] if by is None else [by]) + list(needed)))


def _group_column_problems(job: JobSpec, info: PoolInfo) -> list[str]:
    """A ``strategy.quotas.by`` column the pool lacks, or of a type that cannot group; the
    columns of a composed selection that the pool lacks or that do not fit their use."""
    from alscale.pool.columns import check_group_column
    from alscale.strategies.quotas import quota_column

    problems = []
    by = quota_column(job.strategy.quotas)
    if by is not None:
        try:
            check_group_column(info.path, by, "strategy.quotas.by")
        except AlscaleError as exc:
            problems.append(str(exc))
    spec = get_strategy(job.strategy.name)
    if spec.pool_check is not None:  # the strategy's own checks of its options against the pool
        from alscale.strategies.registry import resolve

        field = "selection" if job.selection else "strategy.options"
        problems += resolve(spec.pool_check)(job.strategy.options, info.path, field)
    return problems


def _columns_needed(job: JobSpec, info: PoolInfo) -> list[str]:
    if uses_model(job):
        return ["features"] if info.feature_dim is not None else [str(info.media)]
    needs = requirements(job.strategy.name, job.strategy.options)
    cols = []
    if info.n_classes is not None and (needs.needs_log_probs or not needs.needs_embeddings or job.strategy.quotas):
        cols.append("log_probs")  # (class quotas need predicted classes)
    if info.embedding_dim is not None:
        cols.append("embedding")
    return cols


def _dry_build(model_spec: Any, info: PoolInfo, seed: int, needs_embedding: bool = False
               ) -> tuple[int, int, int | None]:
    """Build the model in the driver and run it on the pool's first rows, so factory,
    checkpoint and dimension errors (and a missing embedding output) surface before any
    worker starts. Returns the model's input width D (decoded from the first image for
    raw-image pools), its class count C and embedding width E (None: logits only)."""
    from alscale.pool import read_shard
    from alscale.types import ShardSpec

    head_spec = ShardSpec(info.path, 0, 0, min(2, info.n_rows))
    if info.feature_dim is not None:
        head = np.asarray(read_shard(head_spec, ["features"], check_finite=False).features_N_D, dtype=np.float32)
    else:
        from alscale.runtime.worker import media_decoder

        head = media_decoder(head_spec, str(info.media), model_spec).decode_all()
    from alscale.scoring import Scorer

    scorer = Scorer(model_spec, in_features=int(head.shape[1]), seed=seed)
    try:
        _, emb = scorer.score(np.nan_to_num(head))
    except AlscaleError:
        raise
    except Exception as exc:  # a model that cannot run on these features
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f" (checkpoint {model_spec.checkpoint})" if model_spec.checkpoint else ""
        raise AlscaleError(
            f"model {model_spec.factory}{where} fails on pool {info.path} features of dimension "
            f"{head.shape[1]}: {first}; check the model's input size"
        ) from None
    if needs_embedding and emb is None:
        raise AlscaleError(
            f"model {model_spec.factory} returns logits only, but the strategy needs embeddings from it; return "
            "(logits, embedding) from forward, or use the pool's 'embedding' column (strategy.embedding: column)"
        )
    return int(head.shape[1]), int(scorer.n_classes or 0), scorer.embedding_dim


def _stream_plan(job: JobSpec, info: PoolInfo, in_features: int, dims: tuple) -> Any:
    """What each worker keeps and reads per chunk under ``runtime.memory_budget``."""
    from alscale.pool.info import open_files
    from alscale.runtime.memory import plan_stream

    n_samples, n_classes, emb_dim = dims
    columns = _columns_needed(job, info)
    if uses_model(job):
        if info.media is None:
            per_row = 4 * in_features
        else:  # encoded images: their share of the pool's bytes, plus the decoded input
            pool = open_files(info.path)
            per_row = sum(f.loc.fs.get_file_info(f.loc.path).size for f in pool.files) // max(info.n_rows, 1)
            per_row += 4 * in_features
    else:
        per_row = (4 * n_samples * (n_classes or 0) if "log_probs" in columns else 0) + \
                  (4 * (emb_dim or 0) if "embedding" in columns else 0)
    largest = None
    if info.format == "parquet":
        pool = open_files(info.path)
        rows, where = max((max(f.piece_rows, default=0), f.where) for f in pool.files)
        largest = (where, rows * (per_row + 8))
    shard_rows = [s.n_rows for s in plan_shards(job.pool, info.n_rows, job.runtime.shards)]
    return plan_stream(budget=int(job.runtime.memory_budget), shard_rows=shard_rows, columns=columns,
                       extra_embeddings=bool(job.strategy.seals), extra_log_probs=bool(job.strategy.quotas),
                       strategy=job.strategy.name, options=job.strategy.options, input_bytes_per_row=per_row,
                       n_samples=int(n_samples), n_classes=n_classes, embedding_dim=emb_dim,
                       job_chunk_rows=job.runtime.chunk_rows, largest_piece=largest, pool=info.path)


class _NoBar:
    """What :func:`_progress_bar` gives when progress is off: a context manager whose
    ``update`` does nothing."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def _progress_bar(progress: bool, **kwargs: Any) -> Any:
    """A tqdm bar on stderr, or a :class:`_NoBar` when progress is off (even a disabled tqdm
    builds tqdm's multiprocessing lock: ~8 ms of imports in a job's first selection)."""
    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(file=sys.stderr, **kwargs)


def _score_all(executor: Any, plan: list, chunk_rows: int, progress: bool, desc: str = "scoring") -> None:
    """Drive every worker through its shard chunk by chunk, with a progress bar."""
    n_chunks = max(math.ceil(s.n_rows / chunk_rows) for s in plan)
    total = sum(s.n_rows for s in plan)
    with _progress_bar(progress, total=total, unit="rows", desc=desc) as bar:
        for chunk in range(n_chunks):
            done = executor.map("score_chunk", [(chunk, chunk_rows)] * len(plan))
            bar.update(int(sum(done)))
