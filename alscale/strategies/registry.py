"""Strategy registry: name -> :class:`~alscale.strategies.spec.StrategySpec`, built from the specs.

Every built-in strategy module exports its spec(s) as ``SPEC`` / ``SPECS``
(:data:`BUILTIN_MODULES`, imported on first lookup so that this module stays light); a user
adds one with :func:`register_strategy`, or names it in a job by import path
(``strategy.name: mypkg.mymodule:MyStrategy``, an attribute that is a ``StrategySpec`` or
has one as ``.spec``).

Kinds (``StrategySpec.kind``):

- ``"score"``: deterministic top-B of a per-row score (``score``; higher = picked first).
- ``"stochastic"``: Gumbel-top-B of a transform of a *base* score strategy (Kirsch et al.,
  "Stochastic Batch Acquisition", TMLR 2023), options ``beta`` and ``base``. Their
  ``min_samples`` and ``needs_log_probs`` are those of the *default* base; a caller must
  resolve the real requirements through the chosen base (:func:`requirements`,
  :func:`score_strategy`).
- ``"random"``: uniform sampling (keyed noise; needs no model output).
- ``"loop"``: a selection loop of its own over the ``Shards`` seam (k-center, BADGE,
  BatchBALD ...), its ``select`` function.

Names are matched case-insensitively, with ``-`` and spaces read as ``_``; aliases map to a
canonical name. There is deliberately no ``powerbald`` entry: the paper's PowerBALD is
``power`` with ``base: bald``.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import spec as _spec

StrategySpec = _spec.StrategySpec
#: Kept for callers of the former name.
StrategyInfo = StrategySpec

__all__ = [
    "BUILTIN_MODULES",
    "Requirements",
    "StrategyInfo",
    "StrategySpec",
    "check_options",
    "get_strategy",
    "register_strategy",
    "requirements",
    "resolve",
    "score_strategy",
    "strategy_names",
    "strategy_ref",
]

#: The built-in strategy modules listed first, in this order (each exports ``SPEC`` or
#: ``SPECS``); any other module of this package that defines ``SPEC`` / ``SPECS`` at its top
#: level is found too (after these, by name), so a new built-in strategy is one module.
BUILTIN_MODULES = (
    "alscale.strategies.scores",
    "alscale.strategies.topk",
    "alscale.strategies.softrank",
    "alscale.strategies.batchbald",
    "alscale.strategies.kcenter",
    "alscale.strategies.badge",
    "alscale.strategies.kmeanspp",
    "alscale.strategies.typiclust",
    "alscale.strategies.probcover",
    "alscale.strategies.cluster_margin",
    "alscale.strategies.alfamix",
    "alscale.strategies.learning_loss",
    "alscale.strategies.egl",
)

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"  # a dotted Python name
_PATH = re.compile(rf"^{_DOTTED}:{_DOTTED}$")
_FORM = "expected 'package.module:Attribute' naming a StrategySpec"

_lock = threading.RLock()
_STRATEGIES: dict[str, StrategySpec] = {}  # canonical name -> spec, in registration order
_ALIASES: dict[str, str] = {}
_REFS: dict[str, str] = {}  # canonical name -> the import path it was loaded from (user strategies)
_BUILTIN: set[str] = set()
_loaded = False


def resolve(path: Any) -> Any:
    """Import ``"package.module:attribute"`` (a callable is returned as it is)."""
    if not isinstance(path, str):
        return path
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _add(spec: StrategySpec, ref: str | None = None) -> StrategySpec:
    """Register ``spec`` (same spec again: a no-op; another spec of a taken name: an error)."""
    if not isinstance(spec, StrategySpec):
        raise AlscaleError(f"register_strategy needs a StrategySpec; got {type(spec).__name__}")
    for key in (spec.name, *(_key(a) for a in spec.aliases)):
        owner = _STRATEGIES.get(key) or _STRATEGIES.get(_ALIASES.get(key, ""))
        if owner is not None and owner is not spec and owner != spec:
            raise AlscaleError(f"strategy name {short_repr(key)} of {spec.name} is taken by strategy {owner.name}; "
                               "give the strategy another name")
    _STRATEGIES[spec.name] = spec
    for a in spec.aliases:
        _ALIASES[_key(a)] = spec.name
    if ref is not None:
        _REFS[spec.name] = ref
    return spec


def _ensure_builtins() -> None:
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        for module in (*BUILTIN_MODULES, *_other_spec_modules()):
            mod = importlib.import_module(module)
            specs = getattr(mod, "SPECS", None) or (mod.SPEC,)
            for s in specs:
                _add(s)
                _BUILTIN.add(s.name)
        _loaded = True


_DEFINES_SPEC = re.compile(r"^SPECS? *[:=]", re.MULTILINE)


def _other_spec_modules() -> list[str]:
    """Modules of this package, not in :data:`BUILTIN_MODULES`, whose source defines a
    top-level ``SPEC`` / ``SPECS`` (read as text, so other modules are not imported)."""
    from pathlib import Path

    package = Path(__file__).parent
    listed = set(BUILTIN_MODULES)
    out = []
    for path in sorted(package.glob("*.py")):
        name = f"{__package__}.{path.stem}"
        if name in listed or path.stem.startswith("_") or path.stem in ("registry", "spec"):
            continue
        if _DEFINES_SPEC.search(path.read_text(encoding="utf-8")):
            out.append(name)
    return out


def register_strategy(spec: Any) -> StrategySpec:
    """Make a user strategy known by its name (and aliases); returns its spec.

    ``spec``: a :class:`StrategySpec`, or an object (e.g. a class) with one as ``.spec``.
    Its ``select`` / ``score`` functions and shard ops must live in an importable module
    (not ``__main__``) for the Ray executor; :func:`alscale.testing.check_strategy` checks
    a strategy's invariants.
    """
    _ensure_builtins()
    with _lock:
        return _add(_as_spec(spec, repr(spec)))


def _as_spec(obj: Any, where: str) -> StrategySpec:
    if isinstance(obj, StrategySpec):
        return obj
    inner = getattr(obj, "spec", None)
    if isinstance(inner, StrategySpec):
        return inner
    raise AlscaleError(f"{where} is not a strategy: it is a {type(obj).__name__}, neither a StrategySpec nor an "
                       "object with a StrategySpec as .spec")


def _load_path(path: str) -> StrategySpec:
    """The strategy named by import path ``"pkg.mod:Attr"``, registered on first use."""
    if not _PATH.match(path.strip()):
        raise AlscaleError(f"bad strategy import path {short_repr(path)}: {_FORM}")
    path = path.strip()
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise AlscaleError(f"cannot import module {short_repr(module_name)} of strategy {short_repr(path)} ({exc}); "
                           "the module must be importable (installed, or its directory on PYTHONPATH)") from exc
    except Exception as exc:
        raise AlscaleError(f"importing module {short_repr(module_name)} of strategy {short_repr(path)} raised "
                           f"{type(exc).__name__}: {str(exc)[:200]}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AlscaleError(f"module {short_repr(module_name)} has no attribute {short_repr(attr)} "
                               f"(strategy {short_repr(path)}); {_FORM}")
        obj = getattr(obj, part)
    spec = _as_spec(obj, f"strategy {short_repr(path)}")
    with _lock:
        return _add(spec, ref=path)


def _canonical(name: str) -> str | None:
    _ensure_builtins()
    key = _key(name)
    key = _ALIASES.get(key, key)
    return key if key in _STRATEGIES else None


def strategy_names() -> list[str]:
    """The canonical strategy names, sorted (aliases not included)."""
    _ensure_builtins()
    return sorted(_STRATEGIES)


def all_strategies() -> list[StrategySpec]:
    """Every registered spec, built-ins first in :data:`BUILTIN_MODULES` order."""
    _ensure_builtins()
    return list(_STRATEGIES.values())


def get_strategy(name: Any) -> StrategySpec:
    """Look a strategy up by name or alias (case-insensitive), by import path
    (``"pkg.mod:Attr"``), or pass a :class:`StrategySpec` through (registering it).

    Raises:
        AlscaleError: ``unknown strategy 'foo'; valid: bald, consensus_kl, ...``.
    """
    if isinstance(name, StrategySpec):
        return name if _STRATEGIES.get(name.name) is name else register_strategy(name)
    if not isinstance(name, str):
        inner = getattr(name, "spec", None)
        if isinstance(inner, StrategySpec):
            return get_strategy(inner)
        raise AlscaleError(f"strategy name must be a string; got {short_repr(name)}")
    canonical = _canonical(name)
    if canonical is None:
        if ":" in name:
            return _load_path(name)
        raise AlscaleError(f"unknown strategy {short_repr(name)}; valid: {', '.join(strategy_names())}")
    return _STRATEGIES[canonical]


def is_builtin(spec: StrategySpec) -> bool:
    """Whether ``spec`` is the built-in strategy of its name (found in every process)."""
    _ensure_builtins()
    return spec.name in _BUILTIN and _STRATEGIES.get(spec.name) is spec


def wire(spec: StrategySpec) -> Any:
    """What a worker is sent to name ``spec``: a built-in's name (known to every worker),
    else the spec itself (pickled by reference to its module)."""
    return spec.name if is_builtin(spec) else spec


def strategy_ref(spec: StrategySpec) -> str:
    """How a process that has not registered ``spec`` finds it: its import path for a
    strategy loaded by one, else its name."""
    return _REFS.get(spec.name, spec.name)


def check_options(name: Any, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a strategy's options and fill in the defaults; returns the full option dict.

    Unknown keys are errors that list the allowed keys; the spec's options dataclass then
    checks the values (:meth:`~alscale.strategies.spec.StrategyOptions.check`).
    """
    info = get_strategy(name)
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise AlscaleError(f"options of strategy {info.name} must be a mapping; got {type(options).__name__}")
    defaults = info.options
    unknown = sorted(str(k) for k in options if k not in defaults)
    if unknown:
        allowed = ", ".join(sorted(defaults)) if defaults else "none"
        raise AlscaleError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(short_repr(k, 40) for k in unknown[:8])}"
            f"{', ...' if len(unknown) > 8 else ''} "
            f"for strategy {info.name}; allowed: {allowed}"
        )
    return info.options_type.check({**defaults, **options})


def check_base(strategy: str, base: object) -> str:
    """The canonical name of ``base`` when it names a strategy that may be a stochastic base."""
    names = sorted(s.name for s in all_strategies() if s.supports.stochastic_base)
    canonical = _canonical(base) if isinstance(base, str) else None
    if canonical is None or not _STRATEGIES[canonical].supports.stochastic_base:
        raise AlscaleError(
            f"option base of strategy {strategy} must be a score strategy; got {short_repr(base)}; "
            f"valid: {', '.join(names)}"
        )
    return canonical


@dataclass(frozen=True)
class Requirements:
    """What a strategy with given options needs from the pool or the model."""

    needs_log_probs: bool
    min_samples: int
    needs_embeddings: bool
    columns: tuple[str, ...] = ()  # pool metadata columns the workers read
    components: tuple[str, ...] = ()  # further strategies whose score functions run on the workers


def requirements(name: Any, options: Mapping[str, Any] | None = None) -> Requirements:
    """Resolve a strategy's needs (through the base score for a stochastic strategy, through
    ``needs_for`` for one whose needs depend on its options)."""
    info = get_strategy(name)
    if info.needs_for is not None:
        n = resolve(info.needs_for)(check_options(info, options))
        return Requirements(n.log_probs, n.min_samples, n.embeddings, tuple(n.columns), tuple(n.components))
    base = score_strategy(info, options) if info.kind == "stochastic" else info
    return Requirements(base.needs_log_probs, base.min_samples, info.needs_embeddings)


def score_strategy(name: Any, options: Mapping[str, Any] | None = None) -> StrategySpec | None:
    """The ``"score"`` strategy whose ``score_fn`` / ``min_samples`` / ``needs_log_probs`` apply.

    Itself for a score strategy, the (validated) base for a stochastic one, None otherwise.
    """
    info = get_strategy(name)
    if info.kind == "score":
        return info
    if info.kind == "stochastic":
        return _STRATEGIES[check_options(info, options)["base"]]
    return None
