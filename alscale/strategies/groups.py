"""Groups of rows for quotas: the predicted class, or the value of a pool column.

A pool column (``source``, ``camera``, ``domain`` ...: integer or string) reaches the shards as
``ShardState.columns[name]`` (the worker reads it; :mod:`alscale.pool.columns`). Its groups
must be numbered the same on every shard, whatever the sharding: :func:`install_groups`
collects every shard's distinct values, sorts their union (numbers ascending, strings by code
point), and has each shard code its rows by position in that list, so group ``g`` is the g-th
smallest value everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from alscale.errors import AlscaleError
from alscale.strategies.shards import LastingState, Shards, ShardState, shard_op

PREDICTED_CLASS = "predicted_class"
#: The most groups a column may have by default (``strategy.quotas.max_groups``).
MAX_GROUPS = 1024
_OP = "alscale.strategies.groups."
_KEY = "groups"


@dataclass
class GroupCodes(LastingState):
    """One shard's installed groups (kept in ``ShardState.strategy_state["groups"]``; they do
    not depend on the candidates): per column, each row's group (int64 ``[N]``) and the number
    of groups."""

    codes_N: dict[str, np.ndarray] = field(default_factory=dict)
    n_groups: dict[str, int] = field(default_factory=dict)


class Distinct(NamedTuple):
    """A shard's distinct values of a column (sorted, at most ``limit + 1``) and whether there
    were more than ``limit``."""

    values: list[Any]
    more: bool


def _values(state: ShardState, column: str) -> np.ndarray:
    if column not in state.columns:
        raise AlscaleError(f"strategy.quotas.by: column '{column}' was not read on this shard; a job reads it "
                           "when strategy.quotas.by names it (in memory: ShardState.columns)")
    return state.columns[column]


@shard_op(mutates=False)
def group_distinct(state: ShardState, column: str, limit: int) -> Distinct:
    """The distinct values of ``column`` on this shard."""
    values = np.unique(_values(state, column))
    return Distinct(values[:limit + 1].tolist(), bool(values.shape[0] > limit))


@shard_op
def group_install(state: ShardState, column: str, values: list[Any]) -> None:
    """Code this shard's rows by their value's position in the global sorted ``values``."""
    v = _values(state, column)
    table = np.asarray(values, dtype=v.dtype)
    codes = np.searchsorted(table, v)
    groups = state.strategy_state.setdefault(_KEY, GroupCodes())
    groups.codes_N[column] = codes.astype(np.int64)
    groups.n_groups[column] = len(values)


def group_codes(state: ShardState, by: str, positions: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The installed group codes (int64) of column ``by`` at ``positions`` (all rows: None), and
    the number of groups."""
    groups = state.strategy_state.get(_KEY)
    if groups is None or by not in groups.codes_N:
        raise RuntimeError(f"groups of column {by!r} are not installed on this shard (install_groups)")
    codes = groups.codes_N[by]
    return (codes if positions is None else codes[positions]), int(groups.n_groups[by])


def install_groups(shards: Shards, column: str, max_groups: int = MAX_GROUPS) -> list[Any]:
    """Number ``column``'s groups on every shard the same way; returns the sorted values
    (group g is ``values[g]``). More than ``max_groups`` distinct values is an error."""
    parts = shards.call(_OP + "group_distinct", column, int(max_groups))
    union = sorted(set().union(*(set(p.values) for p in parts)))
    if any(p.more for p in parts) or len(union) > max_groups:
        raise AlscaleError(f"strategy.quotas.by: column '{column}' has more than {max_groups} distinct values "
                           f"(first: {', '.join(map(repr, union[:3]))}, ...); group by a coarser column or raise "
                           "strategy.quotas.max_groups")
    if not union:
        raise AlscaleError(f"strategy.quotas.by: column '{column}' has no rows")
    shards.call(_OP + "group_install", column, union)
    return union
