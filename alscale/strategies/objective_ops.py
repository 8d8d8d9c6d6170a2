"""Shard ops of the composed selection (:mod:`alscale.strategies.objective`): score components,
filters, the combined score, the shortlist and the per-pick provenance, computed where the
rows live.

Per shard, the composition keeps one :class:`ObjectiveShard` in ``ShardState.strategy_state``
(a :class:`~alscale.strategies.shards.LastingState`: kept when the candidates change, as the
quota phases change them, and part of every snapshot): each component's raw value per row,
the index of the filter rule that admitted the row, and the combined score.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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


@shard_op
def scores(state: ShardState, comps: Sequence[Mapping[str, Any]], seed: int, round: int
           ) -> tuple[list[Any], int]:
    """Compute every component's raw values; returns, per component, what its normalisation
    needs over this shard's candidates (sorted values for ``rank``, (min, max) for ``minmax``,
    None for ``raw``), and the number of candidates (before the filters)."""
    obj = _obj(state)
    cand = state.candidates_N
    stats: list[Any] = []
    for comp in comps:
        v = obj.raw[comp["label"]] = component_values(state, comp, seed, round)
        c = v[cand]
        if comp["normalize"] == "rank":
            stats.append(np.sort(c))
        elif comp["normalize"] == "minmax":
            stats.append((float(c.min()), float(c.max())) if c.size else None)
        else:
            stats.append(None)
    return stats, int(np.count_nonzero(cand))


def _field_values(state: ShardState, pred: Mapping[str, Any], seed: int, round: int,
                  memo: dict[str, np.ndarray]) -> np.ndarray:
    if pred["source"] == "column":
        return column_values(state, pred["field"], f"filter on {pred['field']}")
    key = json.dumps([pred["field"]], sort_keys=True)
    if key not in memo:
        memo[key] = _score_values(state, pred["field"], {}, seed, round)
    return memo[key]


@shard_op
def filters(state: ShardState, rules: Sequence[Mapping[str, Any]], seed: int, round: int) -> tuple[list[int], int]:
    """Evaluate the filter rules; only rows some rule admits stay candidates. Returns the
    candidates each rule admitted first (in rule order) and the candidates left."""
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
    return [int(c) for c in counts], int(np.count_nonzero(state.candidates_N))


@shard_op
def combined(state: ShardState, params: Sequence[tuple[str, float, str, Any]]) -> None:
    """The combined score ``sum weight * normalise(raw)``; ``params`` per component:
    (label, weight, normalisation, its pool-wide statistic: merged sorted values for rank,
    (min, max) for minmax, None for raw)."""
    obj = _obj(state)
    parts = []
    for label, _w, how, stat in params:
        raw = obj.raw[label]
        parts.append(midrank(raw, stat) if how == "rank" else minmax(raw, *stat) if how == "minmax" else raw)
    obj.combined_N = combine(parts, [p[1] for p in params], state.n_rows())


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


@shard_op(mutates=False)
def provenance(state: ShardState, row_ids: np.ndarray, labels: Sequence[str]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For those of ``row_ids`` on this shard: (ids, filter rule index, raw components
    ``[R, P]``, combined score)."""
    obj = _obj(state)
    pos = np.flatnonzero(np.isin(state.row_ids_N, np.asarray(row_ids, np.int64)))
    raw = np.stack([obj.raw[lb][pos] for lb in labels], axis=1) if labels else np.empty((pos.size, 0))
    rule = obj.rule_N[pos] if obj.rule_N is not None else np.full(pos.size, -2, np.int32)
    comb = obj.combined_N[pos] if obj.combined_N is not None else np.zeros(pos.size)
    return state.row_ids_N[pos], rule, raw, comb


OP_SCORES = _OP + "scores"
OP_FILTERS = _OP + "filters"
OP_COMBINED = _OP + "combined"
OP_RANK = _OP + "rank_by_combined"
OP_KEEP = _OP + "keep_only"
OP_PROVENANCE = _OP + "provenance"
