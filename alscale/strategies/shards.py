"""The seam between selection loops and "where the rows live" (DESIGN §3).

A selection loop talks only to :class:`Shards`. :class:`ShardState` is one partition of
candidate rows held in memory (numpy); :class:`FanoutShards` implements ``Shards`` over any
*fan-out* — an object with ``map(method, args_per_worker) -> list`` that calls ``method``
on every partition holder and returns the results in worker order. The in-process fan-out
(:class:`InProcessFanout`) is the reference; the Ray executor in ``alscale.runtime`` is the
same interface over actors. No loop has a Ray twin.

Row order everywhere: higher score first, ties to the lower ``row_id``.

The protocol is small: counts, the masks (``exclude`` / ``restrict``), the ranking key and
its exact top-k, ``take`` (rows by ``row_id``, the labelled rows, the candidates) and the
keyed random fill, each with a typed result (:class:`TopK`, :class:`Rows`) and declared as
a read or a change (docs/architecture.md lists them). Selection loops with shard-side state
of their own (k-center min-distances, k-means++ masses, BatchBALD scoring) register *shard
ops* with :func:`shard_op`: plain functions ``fn(state: ShardState, *args)`` that return a
typed result and keep their state in ``state.strategy_state`` (one typed object per
strategy module, under its key). A loop calls them on every shard with
``FanoutShards.call(op, *args)`` (one fan-out). The op's module must be imported where the
shard lives; ``ShardState.call`` imports it from the op name
(``"alscale.strategies.kcenter_shard.sync"`` lives in ``alscale.strategies.kcenter_shard``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from alscale.strategies import noise, registry

logger = logging.getLogger(__name__)


class Fanout(Protocol):
    """One fan-out primitive: call ``method`` on every worker with its own arguments."""

    @property
    def n_workers(self) -> int: ...

    def map(self, method: str, args_per_worker: Sequence[tuple]) -> list: ...


_SHARD_OPS: dict[str, Callable[..., Any]] = {}
_READ_ONLY: set[str] = set()  # ops declared mutates=False


def shard_op(fn: Callable[..., Any] | None = None, *, mutates: bool = True) -> Any:
    """Register ``fn(state, *args)`` as the shard op ``"<its module>.<its name>"``.

    ``@shard_op`` or ``@shard_op(mutates=False)``: an op that only reads the shard's state
    says so (``mutates=False``); one that changes it (its scores, its strategy state, its
    candidates) keeps the default. An executor that rebuilds a lost worker by replaying its
    state-changing calls asks :func:`op_mutates`.
    """

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        name = f"{f.__module__}.{f.__name__}"
        _SHARD_OPS[name] = f
        if mutates:
            _READ_ONLY.discard(name)
        else:
            _READ_ONLY.add(name)
        return f

    return register(fn) if fn is not None else register


def op_mutates(op: str) -> bool:
    """Whether shard op ``op`` may change the shard's state (True unless declared read-only)."""
    _lookup_op(op)
    return op not in _READ_ONLY


def _lookup_op(op: str) -> Callable[..., Any]:
    """The shard op ``op``, importing its module by the op's declared path first (a user's
    strategy module too: it must be importable where the shard lives)."""
    fn = _SHARD_OPS.get(op)
    if fn is not None:
        return fn
    module = op.rpartition(".")[0]
    if module and module != "__main__":
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise KeyError(f"no shard op {op!r}: its module {module!r} does not import here ({exc}); install it on "
                           "every worker or ship it (Ray runtime_env py_modules)") from exc
    if op not in _SHARD_OPS:
        raise KeyError(f"no shard op {op!r} is registered")
    return _SHARD_OPS[op]


class TopK(NamedTuple):
    """Rows in pick order: their ranking keys (higher first, ties to the lower ``row_id``)
    and ids. The result of :meth:`Shards.topk` and of the keyed random fill."""

    scores_K: np.ndarray
    row_ids_K: np.ndarray


class Rows(NamedTuple):
    """Rows fetched from one shard by :meth:`Shards.take`: their ids and the requested
    columns (None when not requested or not held). Embeddings are float32; log-probs as held."""

    row_ids_R: np.ndarray
    embeddings_R_D: np.ndarray | None
    log_probs_R_K_C: np.ndarray | None


class Shards(Protocol):
    """Where candidate rows live (DESIGN §3): the generic operations every selection loop
    shares. Each method is one fan-out plus a reduce (one round trip); ``call`` /
    ``call_each`` run a strategy module's own shard ops. docs/architecture.md lists them
    with their typed results and whether they change the shards' state."""

    @property
    def n_shards(self) -> int: ...

    @property
    def round_trips(self) -> int: ...

    def n_rows(self) -> int: ...

    def n_candidates(self) -> int: ...

    def exclude(self, row_ids: np.ndarray) -> int: ...

    def restrict(self, row_ids: np.ndarray) -> int: ...

    def compute_scores(self, strategy: Any, options: Mapping[str, Any], seed: int, round: int) -> None: ...

    def topk(self, k: int) -> TopK: ...

    def take(self, row_ids: np.ndarray | None, columns: Sequence[str] = ..., where: str = ...,
             page: tuple[int, int] | None = ...) -> list[Rows]: ...

    def random_fill(self, k: int, seed: int, round: int, exclude_ids: np.ndarray | None = ...,
                    smallest: bool = ...) -> TopK: ...

    def call(self, op: str, *args: Any) -> list: ...

    def call_each(self, op: str, args_per_shard: Sequence[tuple]) -> list: ...


def order_desc(scores_N: np.ndarray, row_ids_N: np.ndarray) -> np.ndarray:
    """Permutation sorting rows by score descending, ties by ``row_id`` ascending."""
    return np.lexsort((row_ids_N, -scores_N))


def topk_order(scores_N: np.ndarray, row_ids_N: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best rows in pick order (exact tie rule), O(N + k log k)."""
    n = scores_N.shape[0]
    if k >= n:
        return order_desc(scores_N, row_ids_N)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(-scores_N, k - 1)[k - 1]
    # Every row that could be among the top k under the tie rule: score >= k-th value.
    cand = np.flatnonzero(-scores_N <= kth)
    return cand[order_desc(scores_N[cand], row_ids_N[cand])[:k]]


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> TopK:
    """Exact global top-k from per-shard top-k lists (each already holds its shard's best k)."""
    if not parts:
        return TopK(np.empty(0, np.float64), np.empty(0, np.int64))
    scores_M = np.concatenate([np.asarray(s, np.float64) for s, _ in parts])
    row_ids_M = np.concatenate([np.asarray(r, np.int64) for _, r in parts])
    pos = topk_order(scores_M, row_ids_M, k)
    return TopK(scores_M[pos], row_ids_M[pos])


class LastingState:
    """Base of a module's shard state that does not depend on the candidate set (e.g. the
    groups of class quotas): :meth:`ShardState.exclude` / :meth:`ShardState.restrict` keep it
    (calling :meth:`candidates_changed`) instead of dropping it with the loops' state."""

    def candidates_changed(self) -> None:
        """The candidates changed: drop whatever part depends on them (default: none)."""


#: What :func:`take` may restrict to: every row, the labelled rows, or the candidates.
TAKE_WHERE = ("all", "labeled", "candidates")


class ShardState:
    """One partition of candidate rows in memory: ids, model outputs, labelled mask, scores.

    Args:
        row_ids_N: int64 pool ids of the rows (unique across all partitions).
        log_probs_N_K_C: natural-log probabilities, or None for strategies that need none.
        embeddings_N_D: penultimate-layer embeddings, kept for the diversity strategies.
        base_scores: score-strategy name -> its scores ``[N]`` computed ahead (a worker that
            streams its shard keeps these instead of the log-probs); used in place of the
            log-probs for that score.
        model_outputs: further per-row model outputs by name (``StrategySpec.needs.model_output``),
            e.g. ``"loss"``: a Learning Loss module's predicted loss ``[N]``.
    """

    def __init__(
        self,
        row_ids_N: np.ndarray,
        log_probs_N_K_C: np.ndarray | None = None,
        embeddings_N_D: np.ndarray | None = None,
        base_scores: Mapping[str, np.ndarray] | None = None,
        model_outputs: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.row_ids_N = np.asarray(row_ids_N, dtype=np.int64)
        self.log_probs_N_K_C = log_probs_N_K_C
        self.embeddings_N_D = embeddings_N_D
        self.base_scores = dict(base_scores or {})
        self.model_outputs = dict(model_outputs or {})  # further per-row model outputs, e.g. "loss"
        self.labeled_N = np.zeros(self.row_ids_N.shape[0], dtype=bool)
        self.eligible_N = np.ones(self.row_ids_N.shape[0], dtype=bool)  # candidate filter (e.g. SEALS)
        self._scores_N: np.ndarray | None = None  # ranking key per row
        self._base_N: np.ndarray | None = None  # base score of a stochastic key
        self.columns: dict[str, np.ndarray] = {}  # pool metadata columns by name (e.g. a quota group column)
        # Per-module shard state: each strategy module keeps one typed state object here under
        # its key (e.g. k-center's min-distances). Dropped when the candidates change, except
        # a LastingState. The one place a worker's selection state lives besides the above.
        self.strategy_state: dict[str, Any] = {}

    # -- bookkeeping -------------------------------------------------------------------
    def n_rows(self) -> int:
        return int(self.row_ids_N.shape[0])

    @property
    def candidates_N(self) -> np.ndarray:
        """Rows that may be picked: unlabelled and not filtered out by :meth:`restrict`."""
        return ~self.labeled_N & self.eligible_N

    def n_candidates(self) -> int:
        return int(np.count_nonzero(self.candidates_N))

    def restrict(self, row_ids: np.ndarray) -> int:
        """Only rows whose id is in ``row_ids`` stay pickable (labelled rows keep their role,
        e.g. as k-center centers); returns how many of them are here."""
        self.eligible_N = np.isin(self.row_ids_N, np.asarray(row_ids, dtype=np.int64))
        self.candidates_changed()
        return int(np.count_nonzero(self.eligible_N))

    def exclude(self, row_ids: np.ndarray) -> int:
        """Mark rows whose id is in ``row_ids`` as labelled; returns how many are here."""
        hit = np.isin(self.row_ids_N, np.asarray(row_ids, dtype=np.int64))
        self.labeled_N |= hit
        self.candidates_changed()
        return int(np.count_nonzero(hit))

    def candidates_changed(self) -> None:
        """Drop the per-module state that depends on the candidates (every entry of
        :attr:`strategy_state` but a :class:`LastingState`, which is told instead). A shard op
        that changes ``eligible_N`` or ``labeled_N`` itself calls this."""
        for key, value in list(self.strategy_state.items()):
            if isinstance(value, LastingState):
                value.candidates_changed()
            else:
                del self.strategy_state[key]

    def call(self, op: str, *args: Any) -> Any:
        """Run the registered shard op ``op`` on this partition."""
        return _lookup_op(op)(self, *args)

    # -- snapshots (a restarted worker's state without replaying its calls) ------------
    def snapshot(self) -> Any:
        """Everything but the loaded arrays (masks, scores, every loop's shard state), exactly:
        a :class:`alscale.strategies.snapshot.StateSnapshot` for :meth:`restore`."""
        from alscale.strategies import snapshot

        return snapshot.capture(self)

    def restore(self, snap: Any) -> None:
        """Take the state of :meth:`snapshot`'s ``snap`` (this state holds the same loaded arrays)."""
        from alscale.strategies import snapshot

        snapshot.restore(self, snap)

    # -- scores ----------------------------------------------------------------------
    @property
    def key_N(self) -> np.ndarray | None:
        """The ranking key of every row (float64 ``[N]``, higher first) set by
        :meth:`compute_scores` / :meth:`use_scores`; None before, or when the strategy's key
        needs more than the row (a stochastic strategy without per-row ``keys``)."""
        return self._scores_N

    @property
    def base_N(self) -> np.ndarray | None:
        """The base score under the ranking key (the score itself, or a stochastic strategy's base)."""
        return self._base_N

    def compute_scores(self, strategy: Any, options: Mapping[str, Any], seed: int, round: int) -> None:
        """Compute this partition's ranking key for ``strategy`` (a name or a
        :class:`~alscale.strategies.spec.StrategySpec`; higher = picked first)."""
        info = registry.get_strategy(strategy)
        opts = registry.check_options(info, options)
        if info.kind == "random":
            self._base_N = noise.keyed_uniform(seed, round, self.row_ids_N)
            self._scores_N = self._base_N
        elif info.kind == "score":
            self._base_N = self._score(info, info.name)
            self._scores_N = self._base_N
        elif info.kind == "stochastic":  # Gumbel-top-k over a transform of a base score
            self._base_N = self._score(registry.get_strategy(opts["base"]), info.name)
            if info.keys is not None:
                self._scores_N = info.keys(self._base_N, noise.keyed_gumbel(seed, round, self.row_ids_N), opts["beta"])
            else:  # the key needs more than the row: the strategy's own select ranks on base_N
                self._scores_N = None
        else:
            raise ValueError(f"strategy {info.name} is a selection loop, not a per-row score")
        if self._scores_N is not None and np.isnan(self._scores_N).any():
            raise ValueError(f"strategy {info.name} produced NaN scores")  # kernels assume valid input

    def use_scores(self, scores_N: np.ndarray) -> None:
        """Rank this partition by ``scores_N`` (float64 ``[N]``, higher first) computed elsewhere —
        by a loop's own shard op (EGL, Learning Loss) — for :meth:`topk`."""
        self._base_N = self._scores_N = np.asarray(scores_N, dtype=np.float64)

    def _score(self, score: Any, strategy: str) -> np.ndarray:
        """The score of ``score`` (a score strategy's spec) for every row: computed ahead,
        or from the log-probs."""
        if score.name in self.base_scores:
            return self.base_scores[score.name]
        return score.score_fn(self._need_log_probs(strategy))

    def _need_log_probs(self, name: str) -> np.ndarray:
        if self.log_probs_N_K_C is None:
            raise ValueError(f"strategy {name} needs log-probs, but this shard has none")
        return self.log_probs_N_K_C

    def topk(self, k: int) -> TopK:
        """This partition's best ``k`` candidate rows by the ranking key, in pick order."""
        if self._scores_N is None:
            raise RuntimeError("compute_scores must run before topk (a strategy without a per-row key ranks "
                               "with its own shard ops)")
        cand = np.flatnonzero(self.candidates_N)
        pos = cand[topk_order(self._scores_N[cand], self.row_ids_N[cand], k)]
        return TopK(self._scores_N[pos], self.row_ids_N[pos])


class InProcessFanout:
    """The reference fan-out: the workers are plain objects in this process."""

    def __init__(self, workers: Sequence[Any]) -> None:
        self.workers = list(workers)

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    def map(self, method: str, args_per_worker: Sequence[tuple]) -> list:
        return [getattr(w, method)(*args) for w, args in zip(self.workers, args_per_worker, strict=True)]


class FanoutShards:
    """:class:`Shards` over a fan-out of partition holders (``ShardState`` or a worker)."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self._round_trips = 0

    @property
    def n_shards(self) -> int:
        """How many partitions (workers) the rows live in."""
        return int(self.fanout.n_workers)

    @property
    def round_trips(self) -> int:
        """Fan-outs made so far (each one round trip to every shard)."""
        return self._round_trips

    def _all(self, method: str, *args: Any) -> list:
        self._round_trips += 1
        return self.fanout.map(method, [args] * self.fanout.n_workers)

    def n_rows(self) -> int:
        return int(sum(self._all("n_rows")))

    def n_candidates(self) -> int:
        return int(sum(self._all("n_candidates")))

    def exclude(self, row_ids: np.ndarray) -> int:
        return int(sum(self._all("exclude", np.asarray(row_ids, dtype=np.int64))))

    def restrict(self, row_ids: np.ndarray) -> int:
        """Keep only ``row_ids`` pickable (a candidate filter); returns how many exist."""
        return int(sum(self._all("restrict", np.asarray(row_ids, dtype=np.int64))))

    def compute_scores(self, strategy: Any, options: Mapping[str, Any], seed: int, round: int) -> None:
        self._all("compute_scores", strategy, dict(options), int(seed), int(round))

    def topk(self, k: int) -> TopK:
        return merge_topk(self._all("topk", int(k)), k)

    def take(self, row_ids: np.ndarray | None, columns: Sequence[str] = ("embeddings",), where: str = "all",
             page: tuple[int, int] | None = None) -> list[Rows]:
        """One fan-out fetching rows to the coordinator: per shard (in shard order) its
        :class:`Rows` among ``row_ids`` (None: all) that are ``where``; ``page = (start,
        count)`` keeps only those positions of each shard's answer."""
        ids = None if row_ids is None else np.asarray(row_ids, dtype=np.int64)
        return self.call(TAKE_OP, ids, tuple(columns), where, page)

    def random_fill(self, k: int, seed: int, round: int, exclude_ids: np.ndarray | None = None,
                    smallest: bool = False) -> TopK:
        """The keyed random fill: the ``k`` candidates (not in ``exclude_ids``) with the largest
        (``smallest``: the smallest) keyed uniform of ``(seed, round, row_id)``, ties to the
        lower ``row_id``, exact over the shards; ``scores_K`` are the uniforms."""
        ex = None if exclude_ids is None else np.asarray(exclude_ids, dtype=np.int64)
        parts = self.call(FILL_OP, int(k), int(seed), int(round), ex, bool(smallest))
        u = np.concatenate([p.scores_K for p in parts]) if parts else np.empty(0)
        ids = np.concatenate([p.row_ids_K for p in parts]) if parts else np.empty(0, np.int64)
        pos = np.lexsort((ids, u if smallest else -u))[:k]
        return TopK(u[pos], ids[pos])

    def call(self, op: str, *args: Any) -> list:
        """Run shard op ``op`` with the same arguments on every shard; results in shard order."""
        return self._all("call", op, *args)

    def call_each(self, op: str, args_per_shard: Sequence[tuple]) -> list:
        """Run shard op ``op`` with per-shard arguments; results in shard order."""
        self._round_trips += 1
        return self.fanout.map("call", [(op, *args) for args in args_per_shard])


# -- the generic shard ops behind take and random_fill -------------------------------------
@shard_op(mutates=False)
def take(state: ShardState, row_ids: np.ndarray | None, columns: Sequence[str], where: str = "all",
         page: tuple[int, int] | None = None) -> Rows:
    """Shard op: this shard's rows among ``row_ids`` (None: every row) that are ``where``
    (``"all"``, ``"labeled"``, ``"candidates"``), with ``columns`` (``"embeddings"``,
    ``"log_probs"``), in shard order; ``page = (start, count)``: only those positions."""
    if where not in TAKE_WHERE:
        raise ValueError(f"take: where must be one of {', '.join(TAKE_WHERE)}; got {where!r}")
    mask = None if where == "all" else state.labeled_N if where == "labeled" else state.candidates_N
    if row_ids is not None:
        hit = np.isin(state.row_ids_N, np.asarray(row_ids, dtype=np.int64))
        mask = hit if mask is None else hit & mask
    pos = np.arange(state.n_rows()) if mask is None else np.flatnonzero(mask)
    if page is not None:
        pos = pos[int(page[0]):int(page[0]) + int(page[1])]
    emb = lp = None
    if "embeddings" in columns:
        if state.embeddings_N_D is None:
            raise ValueError("take: this shard holds no embeddings")
        emb = np.asarray(state.embeddings_N_D[pos], dtype=np.float32)
    if "log_probs" in columns and state.log_probs_N_K_C is not None:
        lp = np.ascontiguousarray(state.log_probs_N_K_C[pos])
    return Rows(state.row_ids_N[pos], emb, lp)


@shard_op(mutates=False)
def random_fill(state: ShardState, k: int, seed: int, round: int, exclude_ids: np.ndarray | None,
                smallest: bool) -> TopK:
    """Shard op of :meth:`FanoutShards.random_fill`: this shard's ``k`` best candidates."""
    cand = np.flatnonzero(state.candidates_N)
    if exclude_ids is not None and exclude_ids.size:
        cand = cand[~np.isin(state.row_ids_N[cand], exclude_ids)]
    ids = state.row_ids_N[cand]
    u = noise.keyed_uniform(seed, round, ids)
    order = np.lexsort((ids, u if smallest else -u))[:k]
    return TopK(u[order], ids[order])


TAKE_OP = f"{__name__}.take"
FILL_OP = f"{__name__}.random_fill"
