"""Class quotas: per predicted class, a minimum and/or maximum number of picks.

The constrained greedy picks, at each step, the best *allowed* row under the strategy's
ranking (ties to the lower ``row_id``): a row of class c is allowed while c has fewer than
``max_c`` picks, and — when the slots left equal the picks still owed to classes below their
minimum — only if c is one of those classes. The predicted class of a row is the argmax of
its mean probability over the K samples (ties: lower class).

When a quota cannot be met: a class with fewer candidate rows than its minimum has its
minimum lowered to its rows (every one of them is picked; the shortfall is logged and reported
as ``unmet``), and its slots go to the best allowed rows of the other classes; minimums that
still add up to more than the budget are an error (before any pick).

Sharded and exact: each shard sorts its candidates per class once; the coordinator merges
the classes' streams lazily, fetching pages of ``page`` rows per (shard, class) only when a
stream runs dry, so a batch costs a few fan-outs and moves O(B + C·page) rows. The greedy
applies to every strategy whose spec ranks rows by a per-row key (``StrategySpec.ranks_by_score``:
scores, random, per-row stochastic keys) and supports quotas.

A selection loop that supports quotas brings its own constrained loop
(``StrategySpec.quota_select``, ``(shards, budget, lo, hi, *, options, seed, round, avail)
-> (Selection, picks per class)``) built from the helpers here: :func:`allowed_classes`
(which classes the next pick may have), :func:`restrict_classes` (a candidate filter by
predicted class), :func:`classes_of` and :class:`QuotaGate` (accept/reject rule for a
sampler). E.g. k-center runs its exact greedy in phases within which the allowed classes
cannot change; BADGE rejects D² proposals of classes that have become disallowed.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import registry
from alscale.strategies.shards import LastingState, Shards, ShardState, order_desc, shard_op
from alscale.types import Selection

logger = logging.getLogger(__name__)

_OP = "alscale.strategies.quotas."


def predicted_class(log_probs_N_K_C: np.ndarray) -> np.ndarray:
    """argmax over classes of the mean probability over K (int64 ``[N]``)."""
    out = np.empty(log_probs_N_K_C.shape[0], dtype=np.int64)
    for r0 in range(0, out.shape[0], 65536):
        p = np.exp(np.asarray(log_probs_N_K_C[r0:r0 + 65536], dtype=np.float64)).mean(axis=1)
        out[r0:r0 + 65536] = p.argmax(axis=1)
    return out


_KEY = "quotas"


@dataclass
class QuotaState(LastingState):
    """One shard's quota state (in ``ShardState.strategy_state["quotas"]``): the pool column the
    quotas group by (None: the predicted class), each grouping's group per row (cached), the
    eligibility before the first quota restriction, and — until the candidates change — the
    candidates of each group in ranking order (:func:`quota_prepare`)."""

    by: str | None = None
    groups_N: dict[str | None, np.ndarray] = field(default_factory=dict)
    eligible_before_N: np.ndarray | None = None
    order_by_group: list[np.ndarray] | None = None

    def candidates_changed(self) -> None:
        self.order_by_group = None


def _quota_state(state: ShardState) -> QuotaState:
    return state.strategy_state.setdefault(_KEY, QuotaState())


def _groups(state: ShardState, positions: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Group of each row (at ``positions``; all rows: None) and the number of groups: the
    predicted class, or the installed codes of the pool column the quotas group by."""
    by = _quota_state(state).by
    if by is not None:
        from alscale.strategies.groups import group_codes

        return group_codes(state, by, positions)
    if state.log_probs_N_K_C is None:
        raise AlscaleError("class quotas need the model's log-probs (predicted classes), but this shard has none")
    lp = state.log_probs_N_K_C if positions is None else state.log_probs_N_K_C[positions]
    return predicted_class(lp), int(state.log_probs_N_K_C.shape[2])


class Page(NamedTuple):
    """One page of a group's stream on one shard: ranking keys (higher first) and row ids."""

    keys_P: np.ndarray
    row_ids_P: np.ndarray


class GroupOf(NamedTuple):
    """The group (predicted class or column group) of each of a shard's rows."""

    row_ids_R: np.ndarray
    groups_R: np.ndarray


@shard_op
def quota_prepare(state: ShardState, strategy: Any, options: Mapping[str, Any], seed: int, round: int,
                  by: str | None = None) -> np.ndarray:
    """Score this shard, sort its candidates per group (predicted class, or pool column ``by``);
    returns the candidates per group (int64 ``[C]``)."""
    _quota_state(state).by = by
    cls, c = _groups(state)
    state.compute_scores(strategy, options, seed, round)
    cand = np.flatnonzero(state.candidates_N)
    keys = state.key_N
    order = cand[order_desc(keys[cand], state.row_ids_N[cand])]
    by_class = [order[cls[order] == j] for j in range(c)]
    _quota_state(state).order_by_group = by_class
    return np.array([b.shape[0] for b in by_class], dtype=np.int64)


@shard_op(mutates=False)
def quota_pages(state: ShardState, requests: list[tuple[int, int]], page: int) -> list[Page]:
    """For each (class, start rank): this shard's ranks [start, start + page) of that class."""
    by_class = _quota_state(state).order_by_group
    if by_class is None:
        raise RuntimeError("quota_pages: quota_prepare must run first (after any change of the candidates)")
    out = []
    for c, start in requests:
        pos = by_class[c][start:start + page]
        out.append(Page(state.key_N[pos].astype(np.float64), state.row_ids_N[pos]))
    return out


@shard_op
def quota_restrict(state: ShardState, disallowed: list[int]) -> int:
    """Only rows of groups (predicted classes) not in ``disallowed`` (and eligible before the
    first quota restriction) stay pickable; returns the candidates left here."""
    qs = _quota_state(state)
    cls = qs.groups_N.get(qs.by)
    if cls is None:
        cls = qs.groups_N[qs.by] = _groups(state)[0]
    if qs.eligible_before_N is None:
        qs.eligible_before_N = state.eligible_N.copy()
    state.eligible_N = qs.eligible_before_N & ~np.isin(cls, np.asarray(disallowed, np.int64))
    state.candidates_changed()
    return int(np.count_nonzero(state.candidates_N))


@shard_op  # sets the grouping for the quota ops that follow: a state change
def quota_class_counts(state: ShardState, by: str | None = None) -> np.ndarray:
    """Candidates per group (predicted class, or pool column ``by``) before any restriction (``[C]``)."""
    _quota_state(state).by = by
    cls, c = _groups(state)
    return np.bincount(cls[state.candidates_N], minlength=c).astype(np.int64)


@shard_op(mutates=False)
def quota_class_of(state: ShardState, row_ids: np.ndarray) -> GroupOf:
    pos = np.flatnonzero(np.isin(state.row_ids_N, row_ids))
    return GroupOf(state.row_ids_N[pos], _groups(state, pos)[0])


def allowed_classes(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray, slots: int) -> np.ndarray:
    """The classes a next pick may have (bool ``[C]``): below their maximum and — when every
    one of the ``slots`` left is owed to minimums — below their minimum."""
    need = np.maximum(lo - counts, 0)
    reserve = slots <= int(need.sum())
    return (counts < hi) & ((need > 0) if reserve else True)


def restrict_classes(shards: Shards, disallowed_C: np.ndarray) -> int:
    """Only candidates whose predicted class is not disallowed (bool ``[C]``) stay pickable;
    returns how many candidates are left."""
    return int(sum(shards.call(_OP + "quota_restrict", np.flatnonzero(disallowed_C).tolist())))


def classes_of(shards: Shards, row_ids: np.ndarray) -> dict[int, int]:
    """row_id -> predicted class of the given rows."""
    parts: list[GroupOf] = shards.call(_OP + "quota_class_of", np.asarray(row_ids, np.int64))
    return {int(r): int(k) for p in parts for r, k in zip(p.row_ids_R.tolist(), p.groups_R.tolist())}


class QuotaGate:
    """The constrained step's rule for a sampler (e.g. BADGE's D² draws): which rows it may
    accept now (``prefetch`` their classes, ``ok``, ``picked``, ``done``)."""

    def __init__(self, shards: Shards, lo: np.ndarray, hi: np.ndarray, budget: int, avail: np.ndarray) -> None:
        self.shards, self.lo, self.hi, self.budget, self.avail = shards, lo, hi, budget, avail
        self.counts = np.zeros(lo.shape[0], dtype=np.int64)
        self.n = 0
        self.cls: dict[int, int] = {}

    def prefetch(self, row_ids: np.ndarray) -> None:
        missing = np.array([r for r in np.asarray(row_ids).tolist() if r not in self.cls], dtype=np.int64)
        if missing.size:
            for p in self.shards.call(_OP + "quota_class_of", missing):
                self.cls.update(zip(p.row_ids_R.tolist(), p.groups_R.tolist()))

    def _allowed(self) -> np.ndarray:
        return allowed_classes(self.counts, self.lo, self.hi, self.budget - self.n)

    def ok(self, row: int) -> bool:
        return bool(self._allowed()[self.cls[row]])

    def done(self) -> bool:
        """No row may be accepted any more (every allowed class is full or out of rows)."""
        return self.n >= self.budget or not (self._allowed() & (self.counts < self.avail)).any()

    def picked(self, row: int) -> None:
        self.counts[self.cls[row]] += 1
        self.n += 1


class Head(NamedTuple):
    """A group stream's best unread row: its key, row id and the shard it is on."""

    key: float
    row_id: int
    shard: int


class _Stream:
    """One class over all shards: per shard, a buffer of fetched rows and the next rank."""

    def __init__(self, n_shards: int) -> None:
        self.n_shards = n_shards
        self.bufs: list[list[tuple[float, int]]] = [[] for _ in range(n_shards)]
        self.at = [0] * n_shards  # read position in each buffer
        self.next_rank = [0] * n_shards
        self.done = [False] * n_shards

    def dry(self) -> list[int]:
        """Shards whose buffer is used up but which may hold more rows of this class."""
        return [s for s in range(self.n_shards) if self.at[s] >= len(self.bufs[s]) and not self.done[s]]

    def add(self, s: int, keys: np.ndarray, ids: np.ndarray, page: int) -> None:
        self.bufs[s] = list(zip(keys.tolist(), ids.tolist()))
        self.at[s] = 0
        self.next_rank[s] += len(ids)
        self.done[s] = len(ids) < page

    def head(self) -> Head | None:
        """The class's best unread row (the stream must not be dry); None when it has none."""
        best = None
        for s in range(self.n_shards):
            if self.at[s] < len(self.bufs[s]):
                k, r = self.bufs[s][self.at[s]]
                if best is None or (k > best.key or (k == best.key and r < best.row_id)):
                    best = Head(k, r, s)
        return best

    def advance(self, head: Head) -> None:
        """Consume ``head`` (the row :meth:`head` returned)."""
        self.at[head.shard] += 1


def class_streams(shards: Shards, pages_op: str, n_shards: int, c: int, page: int
                  ) -> tuple[list[_Stream], Callable[[list[int]], None]]:
    """One lazily merged stream per class and its ``refill(classes)``: one fan-out of
    ``pages_op(state, [(class, next_rank)], page)`` for every stream whose shards ran dry."""
    streams = [_Stream(n_shards) for _ in range(c)]

    def refill(classes: list[int]) -> None:
        reqs: list[list[tuple[int, int]]] = [[] for _ in range(n_shards)]
        for j in classes:
            for s in streams[j].dry():
                reqs[s].append((j, streams[j].next_rank[s]))
        if not any(reqs):
            return
        res = shards.call_each(pages_op, [(r, page) for r in reqs])
        for s in range(n_shards):
            for (j, _), got in zip(reqs[s], res[s]):
                streams[j].add(s, got.keys_P, got.row_ids_P, page)

    return streams, refill


def _bounds(spec: Any, c: int, name: str) -> np.ndarray:
    """Per-class counts ``[C]`` from a quota spec; absent: 0 for ``min``, unbounded for ``max``."""
    if spec is None:
        return np.full(c, 0 if name == "min" else np.iinfo(np.int64).max, dtype=np.int64)
    if isinstance(spec, bool):
        raise AlscaleError(f"strategy.quotas.{name} must be a count or a mapping class -> count; "
                           f"got {short_repr(spec)}")
    if isinstance(spec, (int, np.integer)):
        if spec < 0:
            raise AlscaleError(f"strategy.quotas.{name} must be >= 0; got {spec}")
        return np.full(c, int(spec), dtype=np.int64)
    if isinstance(spec, Mapping):
        out = np.full(c, 0 if name == "min" else np.iinfo(np.int64).max, dtype=np.int64)
        for k, v in spec.items():
            try:
                j = int(k)
            except (TypeError, ValueError):
                raise AlscaleError(f"strategy.quotas.{name}: class {short_repr(k)} is not a class index") from None
            if not 0 <= j < c:
                raise AlscaleError(f"strategy.quotas.{name}: class {j} is outside the model's {c} classes (0..{c - 1})")
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise AlscaleError(f"strategy.quotas.{name}[{j}] must be a count >= 0; got {short_repr(v)}")
            out[j] = int(v)
        return out
    raise AlscaleError(f"strategy.quotas.{name} must be a count or a mapping class -> count; got {short_repr(spec)}")


def quotas_supported(name: Any) -> bool:
    """Whether strategy ``name`` takes class quotas (its spec's ``supports.quotas``: a
    per-row ranking through the greedy below, a loop through its ``quota_select``)."""
    info = registry.get_strategy(name)
    return info.supports.quotas and (info.ranks_by_score or info.quota_select is not None)


def unsupported_message(name: Any) -> str:
    """Why strategy ``name`` takes no quotas, listing the loops that do."""
    loops = [s.name for s in registry.all_strategies() if s.kind == "loop" and quotas_supported(s)]
    which = ", ".join(loops[:-1]) + " and " + loops[-1] if len(loops) > 1 else "".join(loops)
    return (f"strategy.quotas work with the score-based strategies, {which}, not "
            f"{registry.get_strategy(name).name} (the other loops do not take quotas yet)")


def check_quotas(quotas: Any) -> dict[str, Any]:
    """Shape check of a job's ``strategy.quotas`` (class counts are checked against C later).

    Keys: ``min``, ``max``; ``by`` (a pool column to group by instead of the predicted class,
    default ``predicted_class``); ``max_groups`` (the most distinct values ``by`` may have)."""
    if not isinstance(quotas, Mapping) or not quotas or set(quotas) - {"min", "max", "by", "max_groups"} or \
            not set(quotas) & {"min", "max"}:
        raise AlscaleError(f"strategy.quotas must be a mapping with 'min' and/or 'max' (and optionally 'by', "
                           f"'max_groups'); got {short_repr(quotas)}")
    by = quotas.get("by", "predicted_class")
    if not isinstance(by, str) or not by:
        raise AlscaleError(f"strategy.quotas.by must name a pool column (integer or string) or be predicted_class; "
                           f"got {short_repr(by)}")
    mg = quotas.get("max_groups")
    if mg is not None and (isinstance(mg, bool) or not isinstance(mg, int) or mg < 1):
        raise AlscaleError(f"strategy.quotas.max_groups must be a positive integer; got {short_repr(mg)}")
    return dict(quotas)


def quota_column(quotas: Mapping[str, Any] | None) -> str | None:
    """The pool column a job's quotas group by (None: the predicted class, or no quotas)."""
    if not quotas:
        return None
    by = quotas.get("by", "predicted_class")
    return None if by == "predicted_class" else str(by)


def _group_bounds(spec: Any, values: list[Any], name: str, by: str) -> np.ndarray:
    """Per-group counts from a quota spec whose mapping keys are values of column ``by``."""
    if not isinstance(spec, Mapping):
        return _bounds(spec, len(values), name)
    index = {v: g for g, v in enumerate(values)}
    numeric = bool(values) and isinstance(values[0], int)
    by_index: dict[int, Any] = {}
    for k, v in spec.items():
        key = k
        if numeric and isinstance(k, str):
            try:
                key = int(k)
            except ValueError:
                pass
        if key not in index:
            shown = ", ".join(map(str, values[:10])) + (", ..." if len(values) > 10 else "")
            raise AlscaleError(f"strategy.quotas.{name}: {short_repr(k)} is not a value of column '{by}' "
                               f"(values: {shown}); use the column's values as keys")
        by_index[index[key]] = v
    return _bounds(by_index, len(values), name)


@dataclass
class QuotaResult:
    selection: Selection
    counts: list[int]  # picks per class
    unmet: dict[Any, int]  # class (or group value) -> picks short of its minimum
    groups: list[Any] | None = None  # by a pool column: the value of each group index (counts[g] is values[g]'s)


def select_with_quotas(shards: Shards, strategy: str, budget: int, quotas: Mapping[str, Any], *,
                       options: Mapping[str, Any] | None = None, seed: int = 0, round: int = 0,
                       page: int | None = None, loop: Callable[..., Any] | None = None) -> QuotaResult:
    """The constrained greedy of the module docstring over a strategy that supports quotas
    (a ranking through :func:`_ranked_greedy`, a loop through its ``quota_select``).

    ``loop``: a constrained loop (the signature of ``StrategySpec.quota_select``) to run
    instead of the strategy's own: a composed selection runs its greedy under the
    constraints of its options (which then need not be ``strategy.quotas``)."""
    info = registry.get_strategy(strategy)
    if loop is None and not quotas_supported(info):
        raise AlscaleError(unsupported_message(info))
    quotas = check_quotas(quotas)
    opts = registry.check_options(info, options or {})
    budget = min(int(budget), shards.n_candidates())
    loop = loop if loop is not None else info.quota_select
    by = quota_column(quotas)
    values = None
    if by is not None:
        from alscale.strategies.groups import MAX_GROUPS, install_groups

        values = install_groups(shards, by, int(quotas.get("max_groups") or MAX_GROUPS))
    if loop is not None:
        prepared = shards.call(_OP + "quota_class_counts", by)
    else:
        prepared = shards.call(_OP + "quota_prepare", registry.wire(info), dict(opts), int(seed), int(round), by)
    avail = np.sum(prepared, axis=0)
    lo, hi, unmet = _quota_bounds(quotas, avail, budget, values, by)
    if loop is not None:  # the strategy's own constrained loop (or the caller's)
        sel, counts = registry.resolve(loop)(shards, budget, lo, hi, options=opts, seed=int(seed),
                                             round=int(round), avail=avail)
    else:
        sel, counts = _ranked_greedy(shards, info.name, budget, lo, hi, len(prepared), page)
    return QuotaResult(sel, counts.tolist(), unmet, values)


def _quota_bounds(quotas: Mapping[str, Any], avail: np.ndarray, budget: int, values: list[Any] | None,
                  by: str | None) -> tuple[np.ndarray, np.ndarray, dict[Any, int]]:
    """Per-group minimums (lowered to the rows there are) and maximums ``[C]``, and the
    minimums no row can meet (group, or column value, -> shortfall); checked against the budget."""
    c = int(avail.shape[0])
    if values is None:
        lo, hi = _bounds(quotas.get("min"), c, "min"), _bounds(quotas.get("max"), c, "max")
    else:
        lo = _group_bounds(quotas.get("min"), values, "min", str(by))
        hi = _group_bounds(quotas.get("max"), values, "max", str(by))
    if (lo > hi).any():
        j = int(np.flatnonzero(lo > hi)[0])
        raise AlscaleError(f"strategy.quotas: class {j} has min {lo[j]} above its max {hi[j]}")
    short = np.maximum(lo - avail, 0)  # minimums no row can meet: known up front
    unmet: dict[Any, int] = {int(j): int(short[j]) for j in np.flatnonzero(short)}
    for j in unmet:
        logger.warning("class quota: class %d has %d candidate rows, fewer than its minimum %d", j, int(avail[j]),
                       int(lo[j]))
    lo = np.minimum(lo, avail)
    if lo.sum() > budget:
        raise AlscaleError(f"strategy.quotas: the minimums add up to {int(lo.sum())}, more than the budget {budget}; "
                           "lower them or raise strategy.budget")
    if values is not None:
        unmet = {values[j]: v for j, v in unmet.items()}
    return lo, hi, unmet


def _ranked_greedy(shards: Shards, name: str, budget: int, lo: np.ndarray, hi: np.ndarray, n_shards: int,
                   page: int | None) -> tuple[Selection, np.ndarray]:
    """The constrained greedy over a per-row ranking: the best allowed row next, from the
    groups' lazily merged streams (a heap of each live group's head)."""
    c = lo.shape[0]
    streams, refill = class_streams(shards, _OP + "quota_pages", n_shards, c,
                                    int(page or max(16, 2 * budget // max(c, 1) + 1)))
    refill(list(range(c)))
    heap: list[tuple[float, int, int]] = []  # (-key, row_id, class)
    counts = np.zeros(c, dtype=np.int64)
    ids_B: list[int] = []
    keys_B: list[float] = []
    alive = hi > 0  # classes that may still have rows

    def push(j: int) -> None:
        if streams[j].dry():
            refill([j])
        h = streams[j].head()
        if h is not None:
            heapq.heappush(heap, (-h.key, h.row_id, j))
        else:
            alive[j] = False  # no rows left in this class (its minimum, capped at its rows, is met)

    for j in np.flatnonzero(alive).tolist():
        push(j)
    while len(ids_B) < budget and heap:
        owed = int(np.maximum(lo - counts, 0)[alive].sum())
        negk, row, j = heapq.heappop(heap)
        if counts[j] >= hi[j]:
            continue  # class full: drop it
        if budget - len(ids_B) <= owed and counts[j] >= lo[j]:
            continue  # every slot left is owed to minimums (they can all be met), and stays so: drop it
        ids_B.append(row)
        keys_B.append(-negk)
        counts[j] += 1
        streams[j].advance(streams[j].head())
        if counts[j] < hi[j]:
            push(j)  # its next row, or the class is exhausted
    return Selection(np.asarray(ids_B, np.int64), np.asarray(keys_B, np.float64), name), counts
