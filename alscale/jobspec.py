"""Job YAML -> a validated :class:`JobSpec`; every error is reported at once, before compute.

A job file (see ``jobs/demo.yaml`` and the README for every field)::

    pool:     {path: data/pool.arrow}
    labeled:  {path: labeled.parquet}          # optional; Parquet or CSV with row_id
    model:    {factory: mlp, kwargs: {num_classes: 10}, mc_samples: 1}   # or null
    strategy: {name: entropy, budget: 1000, options: {}, round: 0}
                                               # embedding: auto|column|model (diversity strategies)
    runtime:  {executor: ray, shards: 2, address: null}
    seed: 0
    output: out/demo

Overrides (``alscale run JOB key=value ...``) address fields with dots, e.g.
``strategy.budget=500 runtime.executor=local``; values are parsed as YAML scalars.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alscale.errors import AlscaleError, JobError, short_repr
from alscale.yamlfile import load_yaml, read_text_bounded

EXECUTORS = ("local", "ray")
#: A job with more problems lists this many and counts the rest.
MAX_ERRORS_SHOWN = 20
#: Where the diversity strategies (k-center, BADGE, k-means++) take embeddings from:
#: ``column`` = the pool's ``embedding`` column; ``model`` = the model's penultimate layer;
#: ``auto`` = the model when the job has one, else the column.
EMBEDDING_SOURCES = ("auto", "column", "model")

_SCHEMA: dict[str, Any] = {
    "pool": {"path": None},
    "labeled": {"path": None},
    "model": {
        "factory": None,
        "kwargs": None,
        "checkpoint": None,
        "mc_samples": None,
        "batch_size": None,
        "device": None,
        "transform": None,
        "decode_threads": None,
    },
    "strategy": {"name": None, "budget": None, "options": None, "round": None, "embedding": None, "seals": None,
                 "quotas": None, "seals_index": None, "seals_mode": None},
    "runtime": {
        "executor": None,
        "shards": None,
        "address": None,
        "cpus_per_worker": None,
        "gpus_per_worker": None,
        "chunk_rows": None,
        "startup_timeout_s": None,
        "cache": None,
        "memory_budget": None,
    },
    "seed": None,
    "output": None,
    # The active-learning loop's protocol (``alscale simulate``); validated by alscale.loop.spec.
    "loop": None,
    # Stream-based selective sampling (``alscale stream``); validated by alscale.workflow.stream.
    "stream": None,
    # A composed objective instead of ``strategy`` (filters, scores, constraints, diversity);
    # validated by alscale.selection.config, run as strategy ``objective``.
    "selection": None,
}


@dataclass(frozen=True)
class ModelConfig:
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    mc_samples: int = 1
    batch_size: int = 4096
    device: str = "auto"
    transform: str | None = None  # raw-image pools: "pixels" (default) or "package.module:callable"
    decode_threads: int = 2


@dataclass(frozen=True)
class StrategyConfig:
    name: str
    budget: int
    options: dict[str, Any] = field(default_factory=dict)
    round: int = 0
    embedding: str = "auto"  # one of EMBEDDING_SOURCES
    seals: int | None = None  # SEALS candidate filter: k nearest unlabelled rows of each labelled row
    quotas: dict[str, Any] | None = None  # class quotas {min: ..., max: ...} by predicted class
    seals_index: str | None = None  # SEALS: a directory keeping the labelled rows' neighbours across rounds
    seals_mode: str = "exact"  # SEALS neighbour search: exact, or an approx_* mode of alscale.index.neighbours


@dataclass(frozen=True)
class RuntimeConfig:
    executor: str = "ray"
    shards: int = 2
    address: str | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    chunk_rows: int = 65536
    startup_timeout_s: float = 300.0  # Ray: give up when the workers cannot all be placed by then
    cache: bool = True  # keep per-chunk model outputs in OUT/cache/ for --resume
    memory_budget: int | None = None  # bytes per worker: stream the shard (alscale.runtime.memory)


@dataclass(frozen=True)
class JobSpec:
    pool: str
    strategy: StrategyConfig
    runtime: RuntimeConfig
    labeled: str | None = None
    model: ModelConfig | None = None
    seed: int = 0
    output: str | None = None
    loop: dict[str, Any] | None = None  # ``alscale simulate`` protocol, see alscale.loop.spec
    stream: dict[str, Any] | None = None  # ``alscale stream`` settings, see alscale.workflow.stream
    source: str | None = None  # the job file it came from
    selection: bool = False  # the strategy came from a ``selection:`` section (strategy ``objective``)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serialisable form (the shape of a job file)."""
        d = asdict(self)
        d["pool"] = {"path": self.pool}
        d["labeled"] = {"path": self.labeled}
        d.pop("source")
        if d.pop("selection"):
            st = d.pop("strategy")
            d["selection"] = {"budget": st["budget"], "round": st["round"], "embedding": st["embedding"],
                              **st["options"]}
        return d


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
    """Read, override and validate a job file. Raises one :class:`JobError` listing every problem."""
    path = Path(path)
    text = read_text_bounded(path, what="job")
    raw = load_yaml(text, source=str(path), what="job")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise JobError(f"job {path}: the top level must be a mapping of fields; got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides, source=str(path))
    return validate_job(raw, source=str(path))


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str], *, source: str = "job") -> dict[str, Any]:
    """Set ``a.b.c=value`` entries (YAML-parsed values) on a copy of ``raw``."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
            raise JobError(f"override {short_repr(item)} must look like key.path=value (e.g. strategy.budget=500)")
        try:
            parsed = load_yaml(value, source=f"override {short_repr(key)}", what="job") if value != "" else None
        except JobError as exc:
            if "refused YAML" in str(exc):  # a bound (size, aliases, duplicates): not a plain string
                raise
            parsed = value
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = parsed
    return out


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unknown_keys(raw: Mapping[str, Any], schema: Mapping[str, Any], prefix: str, errors: list[str]) -> None:
    for key in raw:
        if key not in schema:
            where = f"{prefix}{key}"
            valid = ", ".join(sorted(schema))
            under = " under " + prefix.rstrip(".") if prefix else ""
            errors.append(f"unknown field {short_repr(where)} (valid{under}: {valid})")
        elif isinstance(schema[key], dict) and isinstance(raw[key], dict):
            _unknown_keys(raw[key], schema[key], f"{prefix}{key}.", errors)


def validate_job(raw: Mapping[str, Any], *, source: str = "job") -> JobSpec:
    """Check every field; raise one :class:`JobError` naming all problems.

    Paths are used as written: relative paths are relative to the current directory (as
    for the CLI), URIs (``s3://``, ``gs://``, ``file://``) go through ``pyarrow.fs``.
    """
    from alscale.strategies import registry

    errors: list[str] = []
    _unknown_keys(raw, _SCHEMA, "", errors)

    def section(name: str, required: bool) -> dict[str, Any]:
        v = raw.get(name)
        if v is None:
            if required:
                errors.append(f"{name} is missing")
            return {}
        if not isinstance(v, dict):
            errors.append(f"{name} must be a mapping; got {short_repr(v)}")
            return {}
        return v

    pool = section("pool", True)
    pool_path = pool.get("path")
    if isinstance(raw.get("pool"), dict) and not (isinstance(pool_path, str) and pool_path):
        errors.append(f"pool.path must be a path or URI string; got {short_repr(pool_path)}")

    labeled = section("labeled", False)
    labeled_path = labeled.get("path")
    if labeled_path is not None and not (isinstance(labeled_path, str) and labeled_path):
        errors.append(f"labeled.path must be a path string or null; got {short_repr(labeled_path)}")

    model_raw = raw.get("model")
    model: ModelConfig | None = None
    if model_raw is not None:
        if not isinstance(model_raw, dict):
            errors.append(f"model must be a mapping or null; got {short_repr(model_raw)}")
        else:
            model = _validate_model(model_raw, errors)

    selection = raw.get("selection") is not None
    strat = _selection_strategy(raw, errors) if selection else section("strategy", True)
    name = strat.get("name")
    info = None
    strat_given = isinstance(raw.get("strategy"), dict)  # an empty mapping still names its missing fields
    if strat_given and name is None:
        errors.append("strategy.name is missing (valid: " + ", ".join(registry.strategy_names()) + ")")
    elif name is not None:
        if not isinstance(name, str):
            errors.append(f"strategy.name must be a string; got {short_repr(name)}")
        else:
            try:
                info = registry.get_strategy(name)
            except AlscaleError as exc:
                errors.append(f"strategy.name: {exc}")
    budget = strat.get("budget")
    if strat_given and not (is_int(budget) and budget > 0):
        errors.append(f"strategy.budget must be a positive integer; got {short_repr(budget)}")
    options = strat.get("options") or {}
    if not isinstance(options, dict):
        errors.append(f"strategy.options must be a mapping; got {short_repr(options)}")
        options = {}
    elif info is not None:
        try:
            options = registry.check_options(info, options)
        except AlscaleError as exc:
            errors.append(f"strategy.options: {exc}")
    rnd = strat.get("round", 0)
    if not (is_int(rnd) and rnd >= 0):
        errors.append(f"strategy.round must be a non-negative integer; got {short_repr(rnd)}")
    embedding = strat.get("embedding")
    embedding = "auto" if embedding is None else embedding
    if embedding not in EMBEDDING_SOURCES:
        errors.append(f"strategy.embedding must be one of {', '.join(EMBEDDING_SOURCES)}; got {short_repr(embedding)}")
    elif embedding == "model" and raw.get("model") is None:
        errors.append("strategy.embedding is model but the job has no model; add a model or use embedding: column")

    seals = strat.get("seals")
    if seals is not None and not (is_int(seals) and seals >= 1):
        errors.append(f"strategy.seals must be a number of neighbours >= 1 (SEALS candidate filter) or null; "
                      f"got {short_repr(seals)}")
    elif seals is not None and info is not None and not info.supports.seals:
        errors.append(f"strategy.seals: strategy {info.name} does not take the SEALS candidate filter; "
                      "set strategy.seals: null")

    seals_index = strat.get("seals_index")
    if seals_index is not None and (not isinstance(seals_index, str) or not seals_index or seals is None):
        errors.append(f"strategy.seals_index must be a directory path and needs strategy.seals; got {short_repr(seals_index)}")
    seals_mode = strat.get("seals_mode") or "exact"
    from alscale.index.neighbours import MODES

    if seals_mode not in MODES:
        errors.append(f"strategy.seals_mode must be one of {', '.join(MODES)}; got {short_repr(seals_mode)}")

    quotas = strat.get("quotas")
    if quotas is not None:
        from alscale.strategies.quotas import check_quotas

        try:
            quotas = check_quotas(quotas)
            from alscale.strategies.quotas import quotas_supported, unsupported_message

            if info is not None and not quotas_supported(info):
                errors.append(unsupported_message(info))
        except AlscaleError as exc:
            errors.append(str(exc))

    rt = section("runtime", False)
    executor = rt.get("executor", "ray")
    if executor not in EXECUTORS:
        errors.append(f"runtime.executor must be one of {', '.join(EXECUTORS)}; got {short_repr(executor)}")
    shards = rt.get("shards", 2)
    if not (is_int(shards) and shards >= 1):
        errors.append(f"runtime.shards must be an integer >= 1; got {short_repr(shards)}")
    address = rt.get("address")
    if address is not None and not isinstance(address, str):
        errors.append("runtime.address must be a string (e.g. ray://head:10001 or auto) or null; "
                      f"got {short_repr(address)}")
    if address is not None and executor == "local":
        errors.append("runtime.address is set but runtime.executor is local; use runtime.executor=ray")
    for key in ("cpus_per_worker", "gpus_per_worker"):
        v = rt.get(key)
        if v is not None and not (is_num(v) and v >= 0 and (key == "gpus_per_worker" or v > 0)):
            errors.append(f"runtime.{key} must be a positive number or null; got {short_repr(v)}")
    chunk_rows = rt.get("chunk_rows", 65536)
    if not (is_int(chunk_rows) and chunk_rows >= 1):
        errors.append(f"runtime.chunk_rows must be a positive integer; got {short_repr(chunk_rows)}")

    startup_timeout_s = rt.get("startup_timeout_s", 300.0)
    if not (is_num(startup_timeout_s) and startup_timeout_s > 0):
        errors.append("runtime.startup_timeout_s must be a positive number of seconds; "
                      f"got {short_repr(startup_timeout_s)}")

    cache = rt.get("cache", True)
    if not isinstance(cache, bool):
        errors.append(f"runtime.cache must be true or false; got {short_repr(cache)}")

    budget_raw = rt.get("memory_budget")
    memory_budget = None
    if budget_raw is not None:
        from alscale.units import parse_bytes

        memory_budget = parse_bytes(budget_raw)
        if memory_budget is None:
            errors.append(f"runtime.memory_budget must be a size per worker such as 4GiB, 512MB or a number of bytes, "
                          f"or null; got {short_repr(budget_raw)}")

    seed = raw.get("seed", 0)
    if not (is_int(seed) and seed >= 0):
        errors.append(f"seed must be a non-negative integer; got {short_repr(seed)}")
    output = raw.get("output")
    if output is not None and not (isinstance(output, str) and output):
        errors.append(f"output must be a directory path or null; got {short_repr(output)}")
    loop = raw.get("loop")
    if loop is not None and not isinstance(loop, dict):
        errors.append(f"loop must be a mapping (see alscale simulate) or null; got {short_repr(loop)}")
    stream = raw.get("stream")
    if stream is not None and not isinstance(stream, dict):
        errors.append(f"stream must be a mapping (see alscale stream) or null; got {short_repr(stream)}")

    # Cross-field: what the strategy needs from the model.
    if info is not None and model is not None and not errors:
        needs = registry.requirements(info, options)
        if needs.needs_log_probs and model.mc_samples < needs.min_samples:
            errors.append(
                f"strategy {info.name} needs at least {needs.min_samples} MC samples; "
                f"set model.mc_samples >= {needs.min_samples} (got {model.mc_samples})"
            )

    if errors:
        n = len(errors)
        shown = errors[:MAX_ERRORS_SHOWN] + ([f"and {n - MAX_ERRORS_SHOWN} more"] if n > MAX_ERRORS_SHOWN else [])
        raise JobError(f"job {source}: {n} error{'s' if n > 1 else ''}: " + "; ".join(shown))

    return JobSpec(
        pool=pool_path,
        labeled=None if labeled_path is None else labeled_path,
        model=model,
        strategy=StrategyConfig(
            name=registry.strategy_ref(info), budget=int(budget), options=dict(options), round=int(rnd), embedding=embedding,
            seals=None if seals is None else int(seals),
            quotas=None if quotas is None else copy.deepcopy(dict(quotas)),
            seals_index=seals_index, seals_mode=seals_mode,
        ),
        runtime=RuntimeConfig(
            executor=executor,
            shards=int(shards),
            address=address,
            cpus_per_worker=rt.get("cpus_per_worker"),
            gpus_per_worker=rt.get("gpus_per_worker"),
            chunk_rows=int(chunk_rows),
            startup_timeout_s=float(startup_timeout_s),
            cache=bool(cache),
            memory_budget=memory_budget,
        ),
        seed=int(seed),
        output=output,
        loop=copy.deepcopy(loop) if loop else None,
        stream=copy.deepcopy(stream) if stream else None,
        source=source,
        selection=selection,
    )


def _selection_strategy(raw: Mapping[str, Any], errors: list[str]) -> dict[str, Any]:
    """The ``strategy`` fields of a job that gives a ``selection:`` section instead (strategy
    ``objective`` with the section as its options); its problems go to ``errors``."""
    from alscale.selection.config import STRATEGY, section_errors

    if raw.get("strategy") is not None:
        errors.append("the job gives both strategy: and selection:; keep one (selection: composes filters, scores, "
                      "constraints and diversity; strategy: names one strategy)")
        return {}
    sec, problems = section_errors(raw["selection"])
    errors.extend(problems)
    if sec is None:
        return {}
    return {"name": STRATEGY, "budget": sec.budget, "round": sec.round, "embedding": sec.embedding,
            "options": sec.options()}


def _validate_model(m: Mapping[str, Any], errors: list[str]) -> ModelConfig | None:
    factory = m.get("factory")
    ok = True
    if not (isinstance(factory, str) and factory):
        errors.append(f"model.factory must be a built-in name or 'package.module:callable'; got {short_repr(factory)}")
        ok = False
    elif ":" not in factory and "." in factory:
        errors.append(f"model.factory {short_repr(factory)} looks like an import path; "
                      "write it as 'package.module:callable'")
        ok = False
    kwargs = m.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        errors.append(f"model.kwargs must be a mapping; got {short_repr(kwargs)}")
        ok = False
    checkpoint = m.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        errors.append(f"model.checkpoint must be a file path or null; got {short_repr(checkpoint)}")
        ok = False
    mc = m.get("mc_samples", 1)
    if not (is_int(mc) and mc >= 1):
        errors.append(f"model.mc_samples must be an integer >= 1; got {short_repr(mc)}")
        ok = False
    bs = m.get("batch_size", 4096)
    if not (is_int(bs) and bs >= 1):
        errors.append(f"model.batch_size must be a positive integer; got {short_repr(bs)}")
        ok = False
    device = m.get("device", "auto")
    if not (isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", device)):
        errors.append(f"model.device must be auto, cpu, cuda or cuda:N; got {short_repr(device)}")
        ok = False
    transform = m.get("transform")
    if transform is not None and not (isinstance(transform, str) and transform):
        errors.append(f"model.transform must be 'pixels' or 'package.module:callable'; got {short_repr(transform)}")
        ok = False
    threads = m.get("decode_threads", 2)
    if not (is_int(threads) and threads >= 1):
        errors.append(f"model.decode_threads must be a positive integer; got {short_repr(threads)}")
        ok = False
    if not ok:
        return None
    return ModelConfig(
        factory=factory, kwargs=dict(kwargs), checkpoint=checkpoint, mc_samples=mc, batch_size=bs, device=device,
        transform=transform, decode_threads=threads,
    )


def code_references(job: JobSpec) -> list[tuple[str, str]]:
    """``(field, import path or program)`` of every piece of code outside alscale the job will
    load or run: a job file is code, like a Python script (README, "What alscale guarantees").

    Import paths (``package.module:name``): ``model.factory``, ``model.transform``,
    ``strategy.name`` and the ``loop`` section's strategy names; programs: ``command``
    oracles of the ``loop`` and ``stream`` sections.
    """
    refs: list[tuple[str, str]] = []

    def path(where: str, value: Any) -> None:
        if isinstance(value, str) and ":" in value:
            refs.append((where, value))

    if job.model is not None:
        path("model.factory", job.model.factory)
        path("model.transform", job.model.transform)
    path("strategy.name", job.strategy.name)
    loop = job.loop or {}
    entries = loop.get("strategies") if isinstance(loop.get("strategies"), list) else []
    for i, entry in enumerate(entries):
        path(f"loop.strategies[{i}]", entry.get("name") if isinstance(entry, dict) else entry)
    initial = loop.get("initial")
    if isinstance(initial, dict):
        path("loop.initial.method", initial.get("method"))

    def oracle(where: str, cfg: Any) -> None:
        if not isinstance(cfg, dict):
            return
        if cfg.get("kind") == "command":
            argv = cfg.get("command")
            shown = " ".join(map(str, argv)) if isinstance(argv, list) else str(argv)
            refs.append((f"{where}.command", short_repr(shown, 200)))
        for sub in ("machine", "people"):
            oracle(f"{where}.{sub}", cfg.get(sub))

    for section, cfg in (("loop", job.loop), ("stream", job.stream)):
        if isinstance(cfg, dict):
            oracle(f"{section}.oracle", cfg.get("oracle"))
    return refs
