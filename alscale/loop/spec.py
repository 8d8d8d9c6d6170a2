"""The ``loop:`` section of a job file -> a validated :class:`LoopSpec` (all errors at once).

A simulation job is an acquisition job (pool, model, strategy, runtime, seed) plus::

    loop:
      test: data/mnist-test.arrow      # held-out pool with features and label (required)
      validation: 1024                 # rows drawn once from the pool for early stopping (0: none)
      initial: {size: 20, method: balanced}   # balanced | random | any strategy name
      subsample: 2000                  # score a random subsample of the unlabelled rows each round
      trials: 3
      strategies: [bald, random]       # default: the job's strategy; entries like `strategy`
      train: {mode: scratch, epochs: 30, draws_per_epoch: 5056, batch_size: 64, lr: 0.001,
              weight_decay: 0.0, patience: 3, eval_batch_size: 2048}
      stop: {budget: 300, target_accuracy: null, metric: test,
             plateau: {epsilon: 0.001, rounds: 5}, max_uncertainty: null, max_rounds: null}

``strategy.budget`` is the batch size b acquired per round (an entry of ``strategies`` may
give its own ``budget``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from alscale.config import Section, also, check_section, fact, lenient, parent_problem, problem, setting
from alscale.errors import AlscaleError, JobError
from alscale.jobspec import EMBEDDING_SOURCES, JobSpec, StrategyConfig, null_is

TRAIN_MODES = ("scratch", "finetune")
INITIAL_METHODS = ("balanced", "random")
METRICS = ("test", "validation")
#: Validation-context facts: the job (its strategy is the default entry; its model) and the raw section.
JOB, RAW = "job", "raw"


class TrainConfig(Section):
    """How each round's model is trained (see :func:`alscale.loop.train.train_classifier`)."""

    #: scratch: re-initialise every round; finetune: continue from the last round
    mode: Literal[TRAIN_MODES] = setting("scratch", "one of " + ", ".join(TRAIN_MODES))  # type: ignore[valid-type]
    epochs: int = setting(30, "an integer >= 1", ge=1)
    batch_size: int = setting(64, "an integer >= 1", ge=1)
    eval_batch_size: int = setting(2048, "an integer >= 1", ge=1)
    #: rows drawn with replacement per epoch; None = one pass
    draws_per_epoch: int | None = setting(None, "an integer >= 1 or null", ge=1)
    #: early stopping on validation accuracy; None = train every epoch
    patience: int | None = setting(3, "an integer >= 1 or null", ge=1)
    lr: float = setting(1e-3, "a positive number", gt=0)
    weight_decay: float = setting(0.0, "a number >= 0", ge=0)


class Plateau(Section):
    """Stop when the watched accuracy gained less than ``epsilon`` over ``rounds`` rounds."""

    epsilon: float = setting(0.001, "a number >= 0", ge=0)
    rounds: int = setting(5, "an integer >= 1", ge=1)


class StopConfig(Section):
    """Stopping criteria; any that fires ends the loop and is recorded as the reason."""

    budget: int | None = setting(None, "an integer >= 1 or null", ge=1)  # total labels, initial set included
    max_rounds: int | None = setting(None, "an integer >= 1 or null", ge=1)  # acquisitions
    target_accuracy: float | None = setting(None, "in (0, 1] or null", gt=0, le=1)
    #: which accuracy target_accuracy and plateau watch
    metric: Literal[METRICS] = setting("test", "one of " + ", ".join(METRICS))  # type: ignore[valid-type]
    #: stop when the round's top acquisition score is below
    max_uncertainty: float | None = setting(None, "a number or null")
    plateau: Plateau | None = setting(None, "a mapping")

    def any(self) -> bool:
        return any(v is not None for v in (self.budget, self.target_accuracy, self.plateau,
                                           self.max_uncertainty, self.max_rounds))


class InitialConfig(Section):
    """The labelled set each trial starts from."""

    size: int = setting(20, "an integer >= 1", ge=1)
    method: str = setting("balanced", "balanced, random or a strategy name")

    @field_validator("method")
    @classmethod
    def _method(cls, method: str) -> str:
        if method in INITIAL_METHODS:
            return method
        from alscale.strategies import registry

        try:
            return registry.get_strategy(method).name
        except AlscaleError:
            raise ValueError("not a strategy") from None


class StrategyEntry(Section):
    """An entry of ``loop.strategies``: a name, or a mapping like ``strategy`` whose budget
    and embedding default to the job's."""

    valid_names = "declared"
    must = "a strategy name or a mapping like strategy"

    name: str = setting(None, "a strategy name", validate_default=True)
    budget: int = setting(None, "a positive integer", ge=1, validate_default=True)  # default: the job's
    options: Annotated[dict, null_is({}, falsy=True)] = setting(default_factory=dict, must="a mapping",
                                                                validate_default=True)  # defaults filled in
    embedding: Literal[EMBEDDING_SOURCES] = setting(  # type: ignore[valid-type]
        "auto", "one of " + ", ".join(EMBEDDING_SOURCES))

    @model_validator(mode="before")
    @classmethod
    def _defaults_of_the_job(cls, entry: Any, info: ValidationInfo) -> Any:
        entry = _named(entry)
        job = fact(info, JOB)
        if isinstance(entry, dict) and job is not None:
            entry = {"budget": job.strategy.budget, "embedding": job.strategy.embedding, **entry}
        return entry

    @field_validator("name", mode="before")
    @classmethod
    def _registered(cls, name: Any) -> str:
        from alscale.strategies import registry

        try:
            return registry.get_strategy(name).name
        except AlscaleError as exc:
            raise parent_problem(str(exc)) from None

    @field_validator("options")
    @classmethod
    def _options_of_the_strategy(cls, options: dict, info: ValidationInfo) -> dict:
        if "name" not in info.data:
            return options
        from alscale.strategies import registry

        try:
            return dict(registry.check_options(info.data["name"], options))
        except AlscaleError as exc:
            raise parent_problem(str(exc)) from None

    def config(self) -> StrategyConfig:
        return StrategyConfig(name=self.name, budget=self.budget, options=self.options, embedding=self.embedding)


def _named(entry: Any) -> Any:
    """A strategy name stands for ``{name: ...}``."""
    return {"name": entry} if isinstance(entry, str) else entry


class LoopSpec(Section):
    """A job's ``loop:`` section (module docstring); :func:`parse_loop` reads it."""

    test: str = setting(None, "the path of a held-out pool with features and label", min_length=1,
                        validate_default=True)
    validation: int = setting(0, "an integer >= 0 (rows held out for early stopping)", ge=0)
    initial: Annotated[InitialConfig, null_is({})] = setting(default_factory=InitialConfig, must="a mapping")
    subsample: int | None = setting(None, "a positive integer or null", ge=1)
    trials: int = setting(1, "an integer >= 1", ge=1)
    #: default: the job's strategy
    entries: list[Annotated[StrategyEntry,
                            BeforeValidator(_named, json_schema_input_type=str | StrategyEntry)]] | None \
        = setting(None, "a non-empty list of strategy names or mappings", min_length=1, alias="strategies")
    train: Annotated[TrainConfig, null_is({})] = setting(default_factory=TrainConfig, must="a mapping")
    stop: Annotated[StopConfig, null_is({})] = setting(default_factory=StopConfig, must="a mapping",
                                                       validate_default=True)  # its checks relate it to the rest
    _strategies: tuple[StrategyConfig, ...] = PrivateAttr(())

    @property
    def strategies(self) -> tuple[StrategyConfig, ...]:
        """What each trial runs, in order."""
        return self._strategies

    @property
    def initial_size(self) -> int:
        return self.initial.size

    @property
    def initial_method(self) -> str:
        return self.initial.method

    @field_validator("entries", mode="wrap")
    @classmethod
    def _each_once(cls, entries: Any, handler: Callable[[Any], Any],
                   info: ValidationInfo) -> list[StrategyEntry] | None:
        def dupes(_: Any) -> list[Any]:
            names = [s.name for s in _valid_entries(info)]
            twice = sorted({n for n in names if names.count(n) > 1})
            return [problem(f"loop.strategies names {', '.join(twice)} more than once; each strategy runs once")] \
                if twice else []

        return also(entries, handler, dupes)

    @field_validator("stop", mode="wrap")
    @classmethod
    def _stop_and_the_rest(cls, stop: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> StopConfig:
        return also(stop, handler, lambda _: _cross_checks(info))

    @model_validator(mode="after")
    def _resolve_strategies(self, info: ValidationInfo) -> LoopSpec:
        job = fact(info, JOB)
        self._strategies = tuple(e.config() for e in self.entries) if self.entries is not None else \
            ((job.strategy,) if job is not None else ())
        return self

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(by_alias=True)
        d["strategies"] = [s.model_dump() for s in self.strategies]
        return d


def _valid_entries(info: ValidationInfo) -> list[StrategyConfig]:
    """The strategies the loop runs, as far as ``loop.strategies`` is valid: the job's
    strategy when it is absent, else its entries that are valid."""
    entries, job = fact(info, RAW, {}).get("strategies"), fact(info, JOB)
    if entries is None:
        return [job.strategy] if job is not None else []
    valid = []
    for entry in entries if isinstance(entries, list) else ():
        try:
            valid.append(StrategyEntry.model_validate(entry, context=info.context).config())
        except ValidationError:
            pass
    return valid


def _cross_checks(info: ValidationInfo) -> list[Any]:
    """The checks that relate ``loop.stop`` and ``loop.train`` to the other fields and to the
    job; each reads what is valid of the sections it relates (:func:`~alscale.config.lenient`)."""
    from alscale.strategies import registry

    raw, job, problems = fact(info, RAW, {}), fact(info, JOB), []
    stop, train = lenient(StopConfig, raw.get("stop")), lenient(TrainConfig, raw.get("train"))
    validation = raw.get("validation", 0)
    if stop is not None and not stop.any():
        problems.append("loop.stop sets no criterion; give at least one of budget, target_accuracy, plateau, "
                        "max_uncertainty, max_rounds")
    if stop is not None and stop.metric == "validation" and validation == 0:
        problems.append("loop.stop.metric is validation but loop.validation is 0; hold out rows or use metric: test")
    if train is not None and train.patience is not None and validation == 0:
        problems.append("loop.train.patience (early stopping) needs validation rows; set loop.validation > 0 "
                        "or loop.train.patience: null")
    strategies = _valid_entries(info)
    if stop is not None and stop.max_uncertainty is not None:
        for s in strategies:
            if registry.get_strategy(s.name).kind != "score":
                problems.append(f"loop.stop.max_uncertainty reads the top acquisition score, which only a top-k "
                                f"uncertainty strategy gives; {s.name} is not one (drop it or the criterion)")
    if job is not None and job.model is not None:
        for s in strategies:
            needs = registry.requirements(s.name, s.options)
            if needs.needs_log_probs and job.model.mc_samples < needs.min_samples:
                problems.append(f"strategy {s.name} needs model.mc_samples >= {needs.min_samples} "
                                f"(got {job.model.mc_samples})")
    return [problem(p) for p in problems]


def parse_loop(job: JobSpec) -> LoopSpec:
    """Validate ``job.loop``; raise one :class:`JobError` naming every problem."""
    where = job.source or "job"
    if job.loop is None:
        raise JobError(f"job {where}: no 'loop' section; alscale simulate needs loop.test at least "
                       "(see jobs/mnist_batchbald2019.yaml)")
    lead = [] if job.model is not None else \
        ["the loop trains a model each round; add a model section (e.g. factory: mnist_cnn)"]
    return check_section(LoopSpec, job.loop, source=where, prefix="loop", context={JOB: job, RAW: job.loop}, lead=lead)
