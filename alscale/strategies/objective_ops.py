"""Shard ops of the composed selection (:mod:`alscale.strategies.objective`): score components,
filters, the combined score, the shortlist and the per-pick provenance, computed where the
rows live.

Per shard, the composition keeps one :class:`ObjectiveShard` in ``ShardState.strategy_state``
(a :class:`~alscale.strategies.shards.LastingState`: kept when the candidates change, as the
quota phases change them, and part of every snapshot): each component's raw value per row,
the index of the filter rule that admitted the row, and the combined score.

The ops, with their typed results (P score components, R filter rules, Q requested rows):

- :func:`scores` → :class:`ScoreStats` (changes: the raw components, the ranking key):
  per component what its pool-wide normalisation needs, and the candidates;
- :func:`filters` → :class:`Admitted` (changes: the eligibility mask): per rule the candidates
  it admitted first, and the candidates left;
- :func:`combined` (takes one :class:`NormParams` per component) → None (changes: the
  combined score);
- :func:`rank_by_combined` → None (changes: the ranking key, for the generic ``topk``);
- :func:`keep_only` → ``int`` (changes: the eligibility mask): the candidates left;
- :func:`provenance` → :class:`Provenance` (reads): the picks' rule, components and score.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from alscale.errors import AlscaleError
from alscale.strategies import registry
from alscale.strategies.objective_kernels import combine, first_rule, midrank, minmax, predicate_mask
from alscale.strategies.shards import LastingState, ShardState, shard_op

KEY = "_objective"
_OP = f"{__name__}."


@dataclass
class ObjectiveShard(LastingState):
    """One shard's composed-selection state (see the module docstring)."""

    raw: dict[str, np.ndarray] = field(default_factory=dict)  # component label -> float64 [N]
    rule_N: np.ndarray | None = None  # int32 [N]: first filter rule passed (-1 none, -2 no filters)
    combined_N: np.ndarray | None = None  # float64 [N]


def _obj(state: ShardState) -> ObjectiveShard:
    return state.strategy_state.setdefault(KEY, ObjectiveShard())


def column_values(state: ShardState, column: str, what: str) -> np.ndarray:
    """The pool column ``column`` read for this selection (numbers as float64 for scores)."""
    if column not in state.columns:
        raise AlscaleError(f"{what}: column '{column}' was not read on this shard; a job reads the columns its "
                           "selection names (in memory: alscale.select(..., columns={name: values}))")
    return state.columns[column]


def _score_values(state: ShardState, name: Any, options: Mapping[str, Any], seed: int, round: int) -> np.ndarray:
    """The per-row values of score strategy ``name`` (its ranking key: a score, keyed uniform
    noise, or a per-row stochastic key), float64 ``[N]``."""
    spec = registry.get_strategy(name)
    state.compute_scores(registry.wire(spec), dict(options), int(seed), int(round))
    return np.asarray(state.key_N, dtype=np.float64)  # the key compute_scores set


def component_values(state: ShardState, comp: Mapping[str, Any], seed: int, round: int) -> np.ndarray:
    """Raw values of one score component (a score strategy, or a numeric pool column)."""
    if comp["column"] is None:
        return _score_values(state, comp["name"], comp["options"], seed, round)
    v = column_values(state, comp["column"], f"score {comp['label']}")
    if v.dtype == object or v.dtype.kind not in "iufb":
        raise AlscaleError(f"score {comp['label']}: column '{comp['column']}' is not numeric; a score column holds "
                           "numbers (cast it, or filter on it instead)")
    out = np.asarray(v, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise AlscaleError(f"score {comp['label']}: column '{comp['column']}' is {out[bad[0]]} at row_id "
                           f"{int(state.row_ids_N[bad[0]])}; a score column needs a finite value on every row")
    return out


class MinMax(NamedTuple):
    """The smallest and largest value of a component (``minmax`` normalisation)."""

    lo: float
    hi: float


class ScoreStats(NamedTuple):
    """One shard's answer to :func:`scores`: ``stats_P``, per component (P, in order) what its
    normalisation needs over this shard's candidates — ``rank``: the sorted values, float64
    ``[n]``; ``minmax``: a :class:`MinMax` (None when the shard has no candidate); ``raw``:
    None — and ``candidates``, the shard's candidates before the filters."""

    stats_P: list[np.ndarray | MinMax | None]
    candidates: int


@shard_op
def scores(state: ShardState, comps: Sequence[Mapping[str, Any]], seed: int, round: int) -> ScoreStats:
    """Compute every component's raw values (kept in :class:`ObjectiveShard`); returns what
    their pool-wide normalisations need."""
    obj = _obj(state)
    cand = state.candidates_N
    stats: list[np.ndarray | MinMax | None] = []
    for comp in comps:
        v = obj.raw[comp["label"]] = component_values(state, comp, seed, round)
        c = v[cand]
        if comp["normalize"] == "rank":
            stats.append(np.sort(c))
        elif comp["normalize"] == "minmax":
            stats.append(MinMax(float(c.min()), float(c.max())) if c.size else None)
        else:
            stats.append(None)
    return ScoreStats(stats, int(np.count_nonzero(cand)))


def _field_values(state: ShardState, pred: Mapping[str, Any], seed: int, round: int,
                  memo: dict[str, np.ndarray]) -> np.ndarray:
    if pred["source"] == "column":
        return column_values(state, pred["field"], f"filter on {pred['field']}")
    key = json.dumps([pred["field"]], sort_keys=True)
    if key not in memo:
        memo[key] = _score_values(state, pred["field"], {}, seed, round)
    return memo[key]


class Admitted(NamedTuple):
    """One shard's answer to :func:`filters`: ``admitted_R``, int64 ``[R]``, the candidates each
    rule (in rule order) admitted first, and ``candidates``, the candidates left."""

    admitted_R: np.ndarray
    candidates: int


@shard_op
def filters(state: ShardState, rules: Sequence[Mapping[str, Any]], seed: int, round: int) -> Admitted:
    """Evaluate the filter rules; only rows some rule admits stay candidates."""
    obj = _obj(state)
    n = state.n_rows()
    memo: dict[str, np.ndarray] = {}
    masks = []
    for rule in rules:
        m = np.ones(n, dtype=bool)
        for pred in rule["where"]:
            m &= predicate_mask(_field_values(state, pred, seed, round, memo), pred["op"], pred["value"])
        masks.append(m)
    obj.rule_N = first_rule(masks, n)
    cand = state.candidates_N
    counts = np.bincount(obj.rule_N[cand & (obj.rule_N >= 0)], minlength=len(rules))[:len(rules)]
    if rules:
        state.eligible_N = state.eligible_N & (obj.rule_N >= 0)
        state.candidates_changed()
    return Admitted(counts.astype(np.int64), int(np.count_nonzero(state.candidates_N)))


class NormParams(NamedTuple):
    """How one component enters the combined score (the argument of :func:`combined`): its
    ``label``, ``weight``, ``normalize`` (``rank`` / ``minmax`` / ``raw``) and the pool-wide
    statistic ``stat``: every shard's sorted values merged (float64 ``[M]``) for ``rank``, a
    :class:`MinMax` for ``minmax``, None for ``raw``."""

    label: str
    weight: float
    normalize: str
    stat: np.ndarray | MinMax | None


@shard_op
def combined(state: ShardState, params: Sequence[NormParams]) -> None:
    """The combined score ``sum weight * normalise(raw)``, one :class:`NormParams` per component."""
    obj = _obj(state)
    parts = []
    for p in params:
        raw = obj.raw[p.label]
        if p.normalize == "rank":
            parts.append(midrank(raw, p.stat))
        elif p.normalize == "minmax":
            parts.append(minmax(raw, p.stat.lo, p.stat.hi))
        else:
            parts.append(raw)
    obj.combined_N = combine(parts, [p.weight for p in params], state.n_rows())


@shard_op
def rank_by_combined(state: ShardState) -> None:
    """Rank this shard's candidates by the combined score (for ``topk``)."""
    state.use_scores(_obj(state).combined_N)


@shard_op
def keep_only(state: ShardState, row_ids: np.ndarray) -> int:
    """Only ``row_ids`` stay candidates (the shortlist); returns the candidates left here."""
    state.eligible_N = state.eligible_N & np.isin(state.row_ids_N, np.asarray(row_ids, np.int64))
    state.candidates_changed()
    return state.n_candidates()


class Provenance(NamedTuple):
    """The rows of :func:`provenance`'s request that live on one shard (Q of them, in shard
    order): ``row_ids_Q``; ``rules_Q``, int32, the filter rule that admitted each (-1 none,
    -2 no filters); ``raw_Q_P``, float64, each component's raw value (P components, in the
    requested order); ``combined_Q``, float64, the combined score."""

    row_ids_Q: np.ndarray
    rules_Q: np.ndarray
    raw_Q_P: np.ndarray
    combined_Q: np.ndarray


@shard_op(mutates=False)
def provenance(state: ShardState, row_ids: np.ndarray, labels: Sequence[str]) -> Provenance:
    """The provenance of those of ``row_ids`` on this shard, components by ``labels``."""
    obj = _obj(state)
    pos = np.flatnonzero(np.isin(state.row_ids_N, np.asarray(row_ids, np.int64)))
    raw = np.stack([obj.raw[lb][pos] for lb in labels], axis=1) if labels else np.empty((pos.size, 0))
    rule = obj.rule_N[pos] if obj.rule_N is not None else np.full(pos.size, -2, np.int32)
    comb = obj.combined_N[pos] if obj.combined_N is not None else np.zeros(pos.size)
    return Provenance(state.row_ids_N[pos], rule, raw, comb)


OP_SCORES = _OP + "scores"
OP_FILTERS = _OP + "filters"
OP_COMBINED = _OP + "combined"
OP_RANK = _OP + "rank_by_combined"
OP_KEEP = _OP + "keep_only"
OP_PROVENANCE = _OP + "provenance"
