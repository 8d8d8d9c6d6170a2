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

Each section is a declarative model (:class:`alscale.config.Section`): a field's type,
default, range and error phrase are declared once below; :func:`validate_job` reports every
problem in one :class:`JobError`.

Overrides (``alscale run JOB key=value ...``) address fields with dots, e.g.
``strategy.budget=500 runtime.executor=local``; values are parsed as YAML scalars.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, PrivateAttr, ValidationInfo, field_validator, model_validator

from alscale.config import (
    MAX_ERRORS_SHOWN,
    Missing,
    Section,
    also,
    check_section,
    fact,
    field_problem,
    from_file,
    problem,
    setting,
)
from alscale.errors import AlscaleError, JobError, short_repr
from alscale.index.neighbours import MODES
from alscale.units import parse_bytes
from alscale.yamlfile import load_yaml, read_text_bounded

__all__ = ["EMBEDDING_SOURCES", "EXECUTORS", "MAX_ERRORS_SHOWN", "JobSpec", "ModelConfig", "RuntimeConfig",
           "StrategyConfig", "apply_overrides", "code_references", "job_schema", "load_job", "validate_job"]

EXECUTORS = ("local", "ray")
#: Where the diversity strategies (k-center, BADGE, k-means++) take embeddings from:
#: ``column`` = the pool's ``embedding`` column; ``model`` = the model's penultimate layer;
#: ``auto`` = the model when the job has one, else the column.
EMBEDDING_SOURCES = ("auto", "column", "model")
#: The validation context's facts: whether the job file has a model, a strategy, a selection section.
HAS_MODEL, HAS_STRATEGY, HAS_SELECTION = "has_model", "has_strategy", "has_selection"
BOTH_STRATEGY_AND_SELECTION = ("the job gives both strategy: and selection:; keep one (selection: composes filters, "
                               "scores, constraints and diversity; strategy: names one strategy)")


def null_is(default: Any, *, falsy: bool = False) -> BeforeValidator:
    """A field whose null (or, with ``falsy``, any false value such as ``{}`` / ``""``) means its default."""
    return BeforeValidator(lambda v: copy.copy(default) if (not v if falsy else v is None) else v)


def _empty_is_none(v: dict[str, Any] | None) -> dict[str, Any] | None:
    return copy.deepcopy(v) if v else None


def _size(v: Any) -> Any:
    if v is None:
        return None
    n = parse_bytes(v)
    if n is None:
        raise ValueError("not a size")
    return n


class PoolSection(Section):
    path: str = setting(must="a path or URI string", min_length=1)


class LabeledSection(Section):
    path: str | None = setting(None, "a path string or null", min_length=1)


class ModelConfig(Section):
    """How workers build the model (``alscale.scoring``); ``factory`` is a built-in name or an import path."""

    factory: str = setting(must="a built-in name or 'package.module:callable'", min_length=1)
    kwargs: Annotated[dict, null_is({}, falsy=True)] = setting(default_factory=dict, must="a mapping")
    checkpoint: str | None = setting(None, "a file path or null")
    mc_samples: int = setting(1, "an integer >= 1", ge=1)
    batch_size: int = setting(4096, "a positive integer", ge=1)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    #: raw-image pools: "pixels" (the default) or "package.module:callable"
    transform: str | None = setting(None, "'pixels' or 'package.module:callable'", min_length=1)
    decode_threads: int = setting(2, "a positive integer", ge=1)

    @field_validator("factory")
    @classmethod
    def _import_path_has_a_colon(cls, factory: str) -> str:
        if ":" not in factory and "." in factory:
            raise problem(f"model.factory {short_repr(factory)} looks like an import path; "
                          "write it as 'package.module:callable'")
        return factory


def _missing_name() -> str:
    from alscale.strategies import registry

    return "is missing (valid: " + ", ".join(registry.strategy_names()) + ")"


class StrategyConfig(Section):
    """What to select: a strategy of the registry (``alscale strategies``) and how many rows.

    Read from a job file, ``name`` becomes the registry's reference (canonical name or import
    path) and ``options`` the strategy's full, checked options; built in code, neither is looked up.
    """

    name: Annotated[str, Missing(_missing_name)] = setting(must="a string")
    budget: int = setting(must="a positive integer", ge=1)
    #: validated when absent too: the strategy's defaults are filled in
    options: Annotated[dict, null_is({}, falsy=True)] = setting(default_factory=dict, must="a mapping",
                                                                validate_default=True)
    round: int = setting(0, "a non-negative integer", ge=0)
    embedding: Annotated[Literal[EMBEDDING_SOURCES], null_is("auto")] = setting(  # type: ignore[valid-type]
        "auto", "one of " + ", ".join(EMBEDDING_SOURCES))
    #: SEALS candidate filter: k nearest unlabelled rows of each labelled row
    seals: int | None = setting(None, "a number of neighbours >= 1 (SEALS candidate filter) or null", ge=1)
    #: SEALS: a directory keeping the labelled rows' neighbours across rounds
    seals_index: str | None = setting(None, "a directory path and needs strategy.seals", min_length=1)
    #: SEALS neighbour search: exact, or an approx_* mode of alscale.index.neighbours
    seals_mode: Annotated[Literal[tuple(MODES)], null_is("exact", falsy=True)] = setting(  # type: ignore[valid-type]
        "exact", "one of " + ", ".join(MODES))
    #: class quotas {min: ..., max: ..., by: ...} (alscale.strategies.quotas)
    quotas: Any = setting(None, "a mapping with 'min' and/or 'max' (and optionally 'by', 'max_groups') or null")

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        if not from_file(info):
            return name
        from alscale.strategies import registry

        try:
            return registry.strategy_ref(registry.get_strategy(name))
        except AlscaleError as exc:
            raise field_problem(str(exc)) from None

    @field_validator("options")
    @classmethod
    def _options_of_the_strategy(cls, options: dict, info: ValidationInfo) -> dict:
        if not from_file(info) or "name" not in info.data:
            return options
        from alscale.strategies import registry

        try:
            return dict(registry.check_options(info.data["name"], options))
        except AlscaleError as exc:
            raise field_problem(str(exc)) from None

    @field_validator("embedding")
    @classmethod
    def _model_embeddings_need_a_model(cls, embedding: str, info: ValidationInfo) -> str:
        if embedding == "model" and fact(info, HAS_MODEL) is False:
            raise problem("strategy.embedding is model but the job has no model; add a model or use embedding: column")
        return embedding

    @field_validator("seals")
    @classmethod
    def _strategy_takes_seals(cls, seals: int | None, info: ValidationInfo) -> int | None:
        if seals is not None and from_file(info) and "name" in info.data:
            spec = _spec(info.data["name"])
            if not spec.supports.seals:
                raise field_problem(f"strategy {spec.name} does not take the SEALS candidate filter; "
                                    "set strategy.seals: null")
        return seals

    @field_validator("seals_index")
    @classmethod
    def _index_needs_seals(cls, seals_index: str | None, info: ValidationInfo) -> str | None:
        if seals_index is not None and "seals" in info.data and info.data["seals"] is None:
            raise ValueError("needs strategy.seals")
        return seals_index

    @field_validator("quotas")
    @classmethod
    def _quotas(cls, quotas: Any, info: ValidationInfo) -> dict[str, Any] | None:
        if quotas is None:
            return None
        from alscale.strategies.quotas import check_quotas, quotas_supported, unsupported_message

        try:
            quotas = check_quotas(quotas)
        except AlscaleError as exc:
            raise problem(str(exc)) from None
        if from_file(info) and "name" in info.data and not quotas_supported(_spec(info.data["name"])):
            raise problem(unsupported_message(_spec(info.data["name"])))
        return copy.deepcopy(dict(quotas))


def _spec(name: str) -> Any:
    from alscale.strategies import registry

    return registry.get_strategy(name)


class RuntimeConfig(Section):
    """Where and how the job runs."""

    executor: Literal[EXECUTORS] = setting("ray", "one of " + ", ".join(EXECUTORS))  # type: ignore[valid-type]
    shards: int = setting(2, "an integer >= 1", ge=1)
    address: str | None = setting(None, "a string (e.g. ray://head:10001 or auto) or null")
    cpus_per_worker: float | None = setting(None, "a positive number or null", gt=0)
    gpus_per_worker: float | None = setting(None, "a positive number or null", ge=0)
    chunk_rows: int = setting(65536, "a positive integer", ge=1)
    #: Ray: give up when the workers cannot all be placed by then
    startup_timeout_s: float = setting(300.0, "a positive number of seconds", gt=0)
    #: keep per-chunk model outputs in OUT/cache/ for --resume
    cache: bool = setting(True, "true or false")
    #: bytes per worker: stream the shard (alscale.runtime.memory); 4GiB, 512MB, 1e9 ...
    memory_budget: Annotated[int | None, BeforeValidator(_size, json_schema_input_type=float | str | None)] = \
        setting(None, "a size per worker such as 4GiB, 512MB or a number of bytes, or null")

    @field_validator("address", mode="wrap")
    @classmethod
    def _address_needs_ray(cls, address: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> str | None:
        local = address is not None and info.data.get("executor") == "local"
        return also(address, handler, [problem("runtime.address is set but runtime.executor is local; "
                                                "use runtime.executor=ray")] * local)


class JobSpec(Section):
    """A validated job (:func:`validate_job`). ``pool`` and ``labeled`` read as the paths;
    ``to_dict()`` gives the shape of a job file.

    Another module declares a section of its own as a field typed by its :class:`Section`
    (``foo: FooSection | None = setting(None, "a mapping or null")``); it is then validated,
    reported and listed among the valid fields like these. ``selection`` keeps its own model
    and messages (:mod:`alscale.selection.config`): its validator reports them here.
    """

    pool_section: Annotated[PoolSection, Missing("is missing")] = setting(must="a mapping", alias="pool")
    labeled_section: LabeledSection | None = setting(None, "a mapping", alias="labeled")
    model: ModelConfig | None = setting(None, "a mapping or null")
    #: instead of ``strategy``: a composed objective (:mod:`alscale.selection.config`, its own model and
    #: messages), run as strategy ``objective`` with the section as its options
    selection_section: Any = setting(None, "a mapping (budget, filters, scores, constraints, diversity) or null",
                                     alias="selection", exclude=True)
    strategy: Annotated[StrategyConfig, Missing("is missing")] = setting(None, "a mapping", validate_default=True)
    runtime: Annotated[RuntimeConfig, null_is({})] = setting(default_factory=RuntimeConfig, must="a mapping")
    seed: int = setting(0, "a non-negative integer", ge=0)
    output: str | None = setting(None, "a directory path or null", min_length=1)
    #: the active-learning loop's protocol (``alscale simulate``), validated by alscale.loop.spec
    loop: Annotated[dict | None, AfterValidator(_empty_is_none)] = setting(
        None, "a mapping (see alscale simulate) or null")
    #: stream-based selective sampling (``alscale stream``), validated by alscale.workflow.stream
    stream: Annotated[dict | None, AfterValidator(_empty_is_none)] = setting(
        None, "a mapping (see alscale stream) or null")
    _source: str | None = PrivateAttr(None)

    @property
    def pool(self) -> str:
        return self.pool_section.path

    @property
    def labeled(self) -> str | None:
        return None if self.labeled_section is None else self.labeled_section.path

    @property
    def source(self) -> str | None:
        """The job file it came from."""
        return self._source

    @property
    def selection(self) -> bool:
        """Whether the strategy came from a ``selection:`` section (strategy ``objective``)."""
        return self.selection_section is not None

    @field_validator("selection_section", mode="wrap")
    @classmethod
    def _selection(cls, raw: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
        if raw is None or not from_file(info):
            return handler(raw)
        if fact(info, HAS_STRATEGY):
            return also(raw, handler, [problem(BOTH_STRATEGY_AND_SELECTION)])
        from alscale.selection.config import section_errors

        section, problems = section_errors(raw)
        return also(section, handler, [problem(p) for p in problems])

    @field_validator("strategy", mode="wrap")
    @classmethod
    def _strategy_or_selection(cls, raw: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
        """A ``selection:`` section gives the strategy: ``objective``, its options the section."""
        if not fact(info, HAS_SELECTION):
            return handler(raw)
        if raw is not None:  # both given (reported at selection): the strategy mapping's unknown keys and gaps too
            return handler({k: v for k, v in raw.items() if k not in StrategyConfig.model_fields}) \
                if isinstance(raw, dict) else None
        section = info.data.get("selection_section")
        if section is None:  # an invalid selection section, reported at selection
            return None
        from alscale.selection.config import STRATEGY

        return handler({"name": STRATEGY, "budget": section.budget, "round": section.round,
                        "embedding": section.embedding, "options": section.options()})

    @model_validator(mode="after")
    def _enough_mc_samples(self, info: ValidationInfo) -> JobSpec:
        if self.model is not None and from_file(info):
            from alscale.strategies import registry

            needs = registry.requirements(self.strategy.name, self.strategy.options)
            if needs.needs_log_probs and self.model.mc_samples < needs.min_samples:
                raise problem(f"strategy {_spec(self.strategy.name).name} needs at least {needs.min_samples} MC "
                              f"samples; set model.mc_samples >= {needs.min_samples} (got {self.model.mc_samples})")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serialisable form (the shape of a job file)."""
        d = self.model_dump(by_alias=True)
        d["labeled"] = {"path": self.labeled}
        if self.selection:  # the job as written: a selection section, not a strategy
            st = d.pop("strategy")
            d["selection"] = {"budget": st["budget"], "round": st["round"], "embedding": st["embedding"],
                              **st["options"]}
        return d

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with some fields changed (not validated again: give valid values); ``pool``
        and ``labeled`` take paths."""
        if "pool" in changes:
            changes["pool_section"] = PoolSection(path=changes.pop("pool"))
        if "labeled" in changes:
            path = changes.pop("labeled")
            changes["labeled_section"] = None if path is None else LabeledSection(path=path)
        return self.model_copy(update=changes)


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


def validate_job(raw: Mapping[str, Any], *, source: str = "job") -> JobSpec:
    """Check every field (the models above); raise one :class:`JobError` naming all problems.

    Paths are used as written: relative paths are relative to the current directory (as
    for the CLI), URIs (``s3://``, ``gs://``, ``file://``) go through ``pyarrow.fs``.
    """
    facts = {key: isinstance(raw, Mapping) and raw.get(name) is not None
             for key, name in ((HAS_MODEL, "model"), (HAS_STRATEGY, "strategy"), (HAS_SELECTION, "selection"))}
    job = check_section(JobSpec, raw, source=source, unknown_first=True, context=facts)
    job._source = source
    return job


def job_schema() -> dict[str, Any]:
    """The JSON schema of a job file (``alscale validate --schema``): every section and field
    with its type, default, range and description (the phrase its error message uses); the
    ``loop`` and ``stream`` sections as :mod:`alscale.loop.spec` and
    :mod:`alscale.workflow.stream` validate them (``selection`` as an open mapping)."""
    from alscale.config import schema
    from alscale.loop.spec import LoopSpec
    from alscale.workflow.stream import StreamSpec

    out = schema(JobSpec)
    # selection: left an open mapping here: its model reads predicates written as strings
    # ('entropy >= 0.5') that its own JSON schema does not describe yet.
    out["properties"]["selection"]["anyOf"] = [{"type": "object"}, {"type": "null"}]
    for name, model in (("loop", LoopSpec), ("stream", StreamSpec)):
        inner = schema(model)
        out.setdefault("$defs", {}).update(inner.pop("$defs", {}))
        out["$defs"][model.__name__] = inner
        field = out["properties"][name]
        field["anyOf"] = [{"$ref": f"#/$defs/{model.__name__}"}, {"type": "null"}]
    out["title"] = "alscale job"
    return out


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
