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

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alscale.errors import JobError, short_repr
from alscale.jobspec import JobSpec, StrategyConfig, is_int, is_num

TRAIN_MODES = ("scratch", "finetune")
INITIAL_METHODS = ("balanced", "random")
METRICS = ("test", "validation")

_TRAIN_DEFAULTS: dict[str, Any] = {
    "mode": "scratch", "epochs": 30, "draws_per_epoch": None, "batch_size": 64, "lr": 1e-3,
    "weight_decay": 0.0, "patience": 3, "eval_batch_size": 2048,
}
_STOP_DEFAULTS: dict[str, Any] = {
    "budget": None, "target_accuracy": None, "metric": "test", "plateau": None,
    "max_uncertainty": None, "max_rounds": None,
}
_LOOP_KEYS = ("test", "validation", "initial", "subsample", "trials", "strategies", "train", "stop")


@dataclass(frozen=True)
class TrainConfig:
    """How each round's model is trained (see :func:`alscale.loop.train.train_classifier`)."""

    mode: str = "scratch"  # scratch: re-initialise every round; finetune: continue from the last round
    epochs: int = 30
    draws_per_epoch: int | None = None  # rows drawn with replacement per epoch; None = one pass
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int | None = 3  # early stopping on validation accuracy; None = train every epoch
    eval_batch_size: int = 2048


@dataclass(frozen=True)
class Plateau:
    epsilon: float
    rounds: int


@dataclass(frozen=True)
class StopConfig:
    """Stopping criteria; any that fires ends the loop and is recorded as the reason."""

    budget: int | None = None  # total labels, initial set included
    target_accuracy: float | None = None
    metric: str = "test"  # which accuracy target_accuracy and plateau watch
    plateau: Plateau | None = None
    max_uncertainty: float | None = None  # stop when the round's top acquisition score is below
    max_rounds: int | None = None  # acquisitions

    def any(self) -> bool:
        return any(v is not None for v in (self.budget, self.target_accuracy, self.plateau,
                                           self.max_uncertainty, self.max_rounds))


@dataclass(frozen=True)
class LoopSpec:
    test: str
    strategies: tuple[StrategyConfig, ...]
    validation: int = 0
    initial_size: int = 20
    initial_method: str = "balanced"
    subsample: int | None = None
    trials: int = 1
    train: TrainConfig = field(default_factory=TrainConfig)
    stop: StopConfig = field(default_factory=StopConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mapping(raw: Any, where: str, keys: Mapping[str, Any], errors: list[str]) -> dict[str, Any]:
    if raw is None:
        return dict(keys)
    if not isinstance(raw, dict):
        errors.append(f"{where} must be a mapping; got {short_repr(raw)}")
        return dict(keys)
    for key in raw:
        if key not in keys:
            errors.append(f"unknown field '{where}.{key}' (valid under {where}: {', '.join(sorted(keys))})")
    return {**keys, **raw}


def _strategy_entry(entry: Any, default: StrategyConfig, where: str, errors: list[str]) -> StrategyConfig | None:
    from alscale.errors import AlscaleError
    from alscale.strategies import registry

    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        errors.append(f"{where} must be a strategy name or a mapping like strategy; got {short_repr(entry)}")
        return None
    valid = ("name", "budget", "options", "embedding")
    unknown = [k for k in entry if k not in valid]
    if unknown:
        errors.append(f"unknown field '{where}.{unknown[0]}' (valid: {', '.join(valid)})")
        return None
    try:
        info = registry.get_strategy(entry.get("name"))
        options = registry.check_options(info.name, entry.get("options") or {})
    except AlscaleError as exc:
        errors.append(f"{where}: {exc}")
        return None
    budget = entry.get("budget", default.budget)
    if not (is_int(budget) and budget > 0):
        errors.append(f"{where}.budget must be a positive integer; got {short_repr(budget)}")
        return None
    embedding = entry.get("embedding", default.embedding)
    return StrategyConfig(name=info.name, budget=int(budget), options=dict(options), embedding=embedding)


def parse_loop(job: JobSpec) -> LoopSpec:
    """Validate ``job.loop``; raise one :class:`JobError` naming every problem."""
    from alscale.strategies import registry

    errors: list[str] = []
    raw = job.loop
    where = job.source or "job"
    if raw is None:
        raise JobError(f"job {where}: no 'loop' section; alscale simulate needs loop.test at least "
                       "(see jobs/mnist_batchbald2019.yaml)")
    for key in raw:
        if key not in _LOOP_KEYS:
            errors.append(f"unknown field 'loop.{key}' (valid under loop: {', '.join(sorted(_LOOP_KEYS))})")
    if job.model is None:
        errors.append("the loop trains a model each round; add a model section (e.g. factory: mnist_cnn)")
    test = raw.get("test")
    if not (isinstance(test, str) and test):
        errors.append(f"loop.test must be the path of a held-out pool with features and label; got {short_repr(test)}")
    validation = raw.get("validation", 0)
    if not (is_int(validation) and validation >= 0):
        errors.append(f"loop.validation must be an integer >= 0 (rows held out for early stopping); "
                      f"got {short_repr(validation)}")
    initial = _mapping(raw.get("initial"), "loop.initial", {"size": 20, "method": "balanced"}, errors)
    if not (is_int(initial["size"]) and initial["size"] >= 1):
        errors.append(f"loop.initial.size must be an integer >= 1; got {short_repr(initial['size'])}")
    method = initial["method"]
    if method not in INITIAL_METHODS:
        try:
            method = registry.get_strategy(method).name
        except Exception:
            errors.append(f"loop.initial.method must be balanced, random or a strategy name; got {short_repr(method)}")
    subsample = raw.get("subsample")
    if subsample is not None and not (is_int(subsample) and subsample >= 1):
        errors.append(f"loop.subsample must be a positive integer or null; got {short_repr(subsample)}")
    trials = raw.get("trials", 1)
    if not (is_int(trials) and trials >= 1):
        errors.append(f"loop.trials must be an integer >= 1; got {short_repr(trials)}")

    entries = raw.get("strategies")
    strategies: list[StrategyConfig] = []
    if entries is None:
        strategies = [job.strategy]
    elif not isinstance(entries, list) or not entries:
        errors.append("loop.strategies must be a non-empty list of strategy names or mappings; "
                      f"got {short_repr(entries)}")
    else:
        for i, entry in enumerate(entries):
            parsed = _strategy_entry(entry, job.strategy, f"loop.strategies[{i}]", errors)
            if parsed is not None:
                strategies.append(parsed)
        names = [s.name for s in strategies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            errors.append(f"loop.strategies names {', '.join(dupes)} more than once; each strategy runs once")

    train_raw = _mapping(raw.get("train"), "loop.train", _TRAIN_DEFAULTS, errors)
    train = _train_config(train_raw, errors)
    stop_raw = _mapping(raw.get("stop"), "loop.stop", _STOP_DEFAULTS, errors)
    stop = _stop_config(stop_raw, errors)
    if stop is not None and not stop.any():
        errors.append("loop.stop sets no criterion; give at least one of budget, target_accuracy, plateau, "
                      "max_uncertainty, max_rounds")
    if stop is not None and stop.metric == "validation" and validation == 0:
        errors.append("loop.stop.metric is validation but loop.validation is 0; hold out rows or use metric: test")
    if train is not None and train.patience is not None and validation == 0:
        errors.append("loop.train.patience (early stopping) needs validation rows; set loop.validation > 0 "
                      "or loop.train.patience: null")
    if stop is not None and stop.max_uncertainty is not None:
        for s in strategies:
            if registry.get_strategy(s.name).kind != "score":
                errors.append(f"loop.stop.max_uncertainty reads the top acquisition score, which only a top-k "
                              f"uncertainty strategy gives; {s.name} is not one (drop it or the criterion)")
    if job.model is not None:
        for s in strategies:
            needs = registry.requirements(s.name, s.options)
            if needs.needs_log_probs and job.model.mc_samples < needs.min_samples:
                errors.append(f"strategy {s.name} needs model.mc_samples >= {needs.min_samples} "
                              f"(got {job.model.mc_samples})")
    if errors:
        raise JobError(f"job {where}: {len(errors)} error{'s' if len(errors) > 1 else ''}: " + "; ".join(errors))
    assert train is not None and stop is not None
    return LoopSpec(
        test=test, strategies=tuple(strategies), validation=int(validation), initial_size=int(initial["size"]),
        initial_method=method, subsample=subsample, trials=int(trials), train=train, stop=stop,
    )


def _train_config(t: dict[str, Any], errors: list[str]) -> TrainConfig | None:
    n = len(errors)
    if t["mode"] not in TRAIN_MODES:
        errors.append(f"loop.train.mode must be one of {', '.join(TRAIN_MODES)}; got {short_repr(t['mode'])}")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if not (is_int(t[key]) and t[key] >= 1):
            errors.append(f"loop.train.{key} must be an integer >= 1; got {short_repr(t[key])}")
    for key in ("draws_per_epoch", "patience"):
        if t[key] is not None and not (is_int(t[key]) and t[key] >= 1):
            errors.append(f"loop.train.{key} must be an integer >= 1 or null; got {short_repr(t[key])}")
    if not (is_num(t["lr"]) and t["lr"] > 0):
        errors.append(f"loop.train.lr must be a positive number; got {short_repr(t['lr'])}")
    if not (is_num(t["weight_decay"]) and t["weight_decay"] >= 0):
        errors.append(f"loop.train.weight_decay must be a number >= 0; got {short_repr(t['weight_decay'])}")
    if len(errors) > n:
        return None
    return TrainConfig(mode=t["mode"], epochs=t["epochs"], draws_per_epoch=t["draws_per_epoch"],
                       batch_size=t["batch_size"], lr=float(t["lr"]), weight_decay=float(t["weight_decay"]),
                       patience=t["patience"], eval_batch_size=t["eval_batch_size"])


def _stop_config(s: dict[str, Any], errors: list[str]) -> StopConfig | None:
    n = len(errors)
    for key in ("budget", "max_rounds"):
        if s[key] is not None and not (is_int(s[key]) and s[key] >= 1):
            errors.append(f"loop.stop.{key} must be an integer >= 1 or null; got {short_repr(s[key])}")
    target = s["target_accuracy"]
    if target is not None and not (is_num(target) and 0 < target <= 1):
        errors.append(f"loop.stop.target_accuracy must be in (0, 1] or null; got {short_repr(target)}")
    if s["metric"] not in METRICS:
        errors.append(f"loop.stop.metric must be one of {', '.join(METRICS)}; got {short_repr(s['metric'])}")
    unc = s["max_uncertainty"]
    if unc is not None and not is_num(unc):
        errors.append(f"loop.stop.max_uncertainty must be a number or null; got {short_repr(unc)}")
    plateau = None
    p = s["plateau"]
    if p is not None:
        p = _mapping(p, "loop.stop.plateau", {"epsilon": 0.001, "rounds": 5}, errors)
        if not (is_num(p["epsilon"]) and p["epsilon"] >= 0):
            errors.append(f"loop.stop.plateau.epsilon must be a number >= 0; got {short_repr(p['epsilon'])}")
        elif not (is_int(p["rounds"]) and p["rounds"] >= 1):
            errors.append(f"loop.stop.plateau.rounds must be an integer >= 1; got {short_repr(p['rounds'])}")
        else:
            plateau = Plateau(float(p["epsilon"]), int(p["rounds"]))
    if len(errors) > n:
        return None
    return StopConfig(budget=s["budget"], target_accuracy=None if target is None else float(target),
                      metric=s["metric"], plateau=plateau, max_uncertainty=None if unc is None else float(unc),
                      max_rounds=s["max_rounds"])
