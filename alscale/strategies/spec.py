"""What a strategy is, in one object: :class:`StrategySpec`.

Every strategy module exports its spec(s) (``SPEC`` or ``SPECS``); the registry is built
from them, and everything outside the strategy's own module — job validation, class quotas,
SEALS, the memory planner, the coordinator, ``alscale strategies``, the property tests —
reads the spec instead of the strategy's name.

A spec says

- ``name`` / ``aliases`` / ``summary`` (one line with the citation);
- ``options``: a dataclass (subclass of :class:`StrategyOptions`) whose fields are the
  options with their types and defaults, and whose :meth:`StrategyOptions.check` holds the
  range checks — declared once;
- ``needs`` (:class:`Needs`): log-probs with at least K samples, embeddings, the model's
  head, the labels of the labelled rows, a model output such as a predicted loss;
- ``supports`` (:class:`Supports`): class quotas, the SEALS filter, streaming under a memory
  budget and the per-row state it keeps then, whether it can be the base of a stochastic
  strategy;
- how it selects: a per-row ``score`` (kind ``"score"``), a stochastic transform ``keys``
  of a base score (kind ``"stochastic"``; a key that needs more than the row, such as
  SoftRank's global rank, gives ``select`` instead, run after the base scores are
  computed), keyed uniform noise (``"random"``), or a
  selection loop ``select(shards, budget, *, options, seed, round) -> Selection`` over the
  :class:`~alscale.strategies.shards.Shards` seam (``"loop"``).

This module imports the standard library and numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

__all__ = ["KINDS", "Needs", "NoOptions", "StrategyOptions", "StrategySpec", "Supports", "fields_of"]

KINDS = ("score", "stochastic", "random", "loop")

#: Per-row state a streaming worker may keep (memory planner): one base score, the
#: log-probs, the embeddings.
STREAM_STATE = ("base_score", "log_probs", "embeddings")


@dataclass(frozen=True)
class StrategyOptions:
    """Base of every strategy's options dataclass: its fields are the options (name, type,
    default). Override :meth:`check` for range checks; it receives the merged option dict
    (defaults filled in, unknown keys already refused) and returns it normalised."""

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return options


@dataclass(frozen=True)
class NoOptions(StrategyOptions):
    """A strategy without options."""


def fields_of(options: type[StrategyOptions]) -> Mapping[str, Any]:
    """The option names with their defaults (read-only), in declaration order."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            raise TypeError(f"option {f.name} of {options.__name__} needs a default")
    return MappingProxyType(out)


@dataclass(frozen=True)
class Needs:
    """What a strategy needs from the pool or the model.

    Attributes:
        log_probs: the model's log-probs ``[N, K, C]`` (or a pool ``log_probs`` column).
        min_samples: the least K (2 for the disagreement scores).
        embeddings: embeddings ``[N, E]`` (model's penultimate layer or pool column).
        head: the model's last linear layer (weights, bias) as the option ``head``: True
            (required), or ``"optional"`` (passed when the model has one; see the coordinator).
        labels: the labelled rows' labels as the option ``labels``.
        model_output: a further model output the workers keep per row (e.g. ``"loss"``,
            a Learning Loss module's predicted loss), read from ``ShardState.model_outputs``.
        columns: pool metadata columns the workers read whole into ``ShardState.columns``
            (e.g. the columns a composed selection filters on).
        components: further strategies (names or import paths) whose score functions run on
            the workers (a composed selection's score components): their modules ship with a
            Ray job like the strategy's own.
    """

    log_probs: bool = True
    min_samples: int = 1
    embeddings: bool = False
    head: bool | str = False
    labels: bool = False
    model_output: str | None = None
    columns: tuple[str, ...] = ()
    components: tuple[str, ...] = ()


@dataclass(frozen=True)
class Supports:
    """What a strategy supports.

    Attributes:
        quotas: class quotas (``strategy.quotas``). A ranking strategy (score, random,
            per-row stochastic) takes them through the generic quota greedy; a loop names
            its constrained loop in ``quota_select``.
        seals: the SEALS candidate filter (``strategy.seals``).
        streaming: runs under ``runtime.memory_budget``.
        keeps: the per-row state a streaming worker keeps for it (subset of
            ``("base_score", "log_probs", "embeddings")``).
        stochastic_base: may be the ``base`` of a stochastic strategy (per-row scores).
    """

    quotas: bool = False
    seals: bool = True
    streaming: bool = True
    keeps: tuple[str, ...] = ()
    stochastic_base: bool = False


@dataclass(frozen=True)
class StrategySpec:
    """One strategy: identity, options, needs, supports, and its selection function.

    ``select`` / ``score`` / ``keys`` / ``quota_select`` may be callables or
    ``"module:function"`` strings, imported on first use (so a registry of many strategies
    stays light). See the module docstring.
    """

    name: str
    kind: str
    summary: str
    options_type: type[StrategyOptions] = NoOptions
    needs: Needs = Needs()
    supports: Supports = Supports()
    aliases: tuple[str, ...] = ()
    score: Callable[[np.ndarray], np.ndarray] | None = None
    keys: Callable[[np.ndarray, np.ndarray, float], np.ndarray] | None = None
    select: Callable[..., Any] | str | None = None
    quota_select: Callable[..., Any] | str | None = None
    citation: str = ""
    #: Needs that depend on the options (a composed selection: its scores, filters and
    #: diversity decide): ``options -> Needs``; None: :attr:`needs` for any options.
    needs_for: Callable[[Mapping[str, Any]], Needs] | str | None = None
    #: Problems of these options with the pool, before any worker starts (e.g. a column it
    #: names that the pool lacks): ``(options, pool path, job field) -> [one-line message]``.
    pool_check: Callable[[Mapping[str, Any], str, str], list[str]] | str | None = None

    _KIND_FIELDS: ClassVar[dict[str, str]] = {"score": "score", "loop": "select"}

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"strategy name must be a lower-case identifier; got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"strategy {self.name}: kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        need = self._KIND_FIELDS.get(self.kind)
        if need is not None and getattr(self, need) is None:
            raise ValueError(f"strategy {self.name} of kind {self.kind} needs '{need}'")
        if self.kind == "stochastic" and self.keys is None and self.select is None:
            raise ValueError(f"strategy {self.name} of kind stochastic needs 'keys' (a per-row key) or 'select' "
                             "(its own top-k over the base scores)")
        if not (isinstance(self.options_type, type) and issubclass(self.options_type, StrategyOptions)
                and dataclasses.is_dataclass(self.options_type)):
            raise ValueError(f"strategy {self.name}: options_type must be a StrategyOptions dataclass")
        if not self.summary or "\n" in self.summary:
            raise ValueError(f"strategy {self.name}: summary must be one line")
        bad = set(self.supports.keeps) - set(STREAM_STATE)
        if bad:
            raise ValueError(f"strategy {self.name}: supports.keeps has unknown state {sorted(bad)}")
        fields_of(self.options_type)  # every option has a default

    # -- read-only views (the registry's former StrategyInfo fields) -------------------
    @property
    def options(self) -> Mapping[str, Any]:
        """Option name -> default (read-only)."""
        return fields_of(self.options_type)

    @property
    def score_fn(self) -> Callable[[np.ndarray], np.ndarray] | None:
        return _resolve(self.score)

    @property
    def select_fn(self) -> Callable[..., Any] | None:
        return _resolve(self.select)

    @property
    def min_samples(self) -> int:
        return self.needs.min_samples

    @property
    def needs_log_probs(self) -> bool:
        return self.needs.log_probs

    @property
    def needs_embeddings(self) -> bool:
        return self.needs.embeddings

    @property
    def ranks_by_score(self) -> bool:
        """Whether it is a per-row ranking (score, random, per-row stochastic): the exact
        sharded top-k, and the generic class-quota greedy, apply."""
        return self.kind in ("score", "random") or (self.kind == "stochastic" and self.keys is not None)


def describe(spec: StrategySpec) -> str:
    """One line of what ``spec`` needs, supports and takes (``alscale strategies -v``)."""
    n = spec.needs
    needs = [w for w, on in ((f"log-probs (K >= {n.min_samples})", n.log_probs), ("embeddings", n.embeddings),
                             ("the model's head", n.head), ("labels", n.labels)) if on]
    if n.model_output:
        needs.append(f"model output '{n.model_output}'")
    sup = spec.supports
    supports = [w for w, on in (("quotas", sup.quotas), ("seals", sup.seals), ("stochastic base",
                                                                                 sup.stochastic_base)) if on]
    if sup.streaming:
        supports.append(f"streaming (keeps {', '.join(sup.keeps) or 'row ids'})")
    opts = ", ".join(f"{k}={v!r}" for k, v in spec.options.items()) or "none"
    alias = f"; aliases: {', '.join(spec.aliases)}" if spec.aliases else ""
    return (f"{spec.kind}; needs: {', '.join(needs) or 'nothing'}; supports: {', '.join(supports) or 'nothing'}; "
            f"options: {opts}{alias}")


def _resolve(obj: Any) -> Any:
    if isinstance(obj, str):
        import importlib

        module, _, attr = obj.partition(":")
        return getattr(importlib.import_module(module), attr)
    return obj
