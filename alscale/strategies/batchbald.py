"""Greedy BatchBALD over the whole sharded pool (Kirsch, van Amersfoort & Gal, NeurIPS 2019).

At step n the batch ``A`` has n rows; the next pick is the unlabelled, unpicked row y that
maximises the batch's joint mutual information with the model parameters,

    a(A ∪ {y}) = H(y_1..n, y) - Σ_{i ∈ A ∪ {y}} E_ω H(y_i | ω),

i.e. the row with the largest gain ``Ĥ(y | A) - E_ω H(y | ω)``; its score in the
:class:`~alscale.types.Selection` is the cumulative ``a(A ∪ {y})``. The joint entropy is
exact while ``C^n <= max_configs`` (default: ``num_samples``, as in the reference: never more
costly than sampling) and an importance-sampled estimate from ``num_samples`` configurations
after that (see :mod:`alscale.strategies.joint_entropy` for the maths and the state).

**Sharded, one fan-out per pick.** The coordinator owns the batch's joint state (float64,
built from the picked rows' ``[K, C]`` log-probs and the job's seed only). Each step it sends
every shard ``post_M_K`` (``p(ω_k | ŷ_m)``, M <= max(max_configs, num_samples) distinct
configurations) and ``weights_M`` — ``8·M·(K + 1)`` bytes, 0.8 MB at M = 1,000, K = 100 —
optionally a grouped state ``centres_G_K, masses_G`` (G = M/4, for the second bound below),
and the previous pick's ``row_id``. Each shard returns its best row: (gain, row_id, the row's
``[K, C]`` log-probs, its expected entropy, work counters). The coordinator keeps the best
(ties: lower row_id), extends the state, and goes on. Round trips: 1 (set-up) + b; the
log-probs never leave the shards except the b picked rows.

**Inside a shard (exact, pruned).** Per step:

1. an upper bound of every live row's gain (Jensen: all configurations in one group,
   ``H(Σ_k w̄_k q_k) - E_ω H``; one float32 GEMV per row, ``O(K·C)``); rows are taken in
   decreasing bound order, in waves of chunks (one chunk per thread on CPU, chunks growing
   from 64 rows to ``chunk_rows`` or about 4 MiB of ``π``; on CUDA one chunk of up to a
   quarter of the free memory), until the next bound is below ``best - 2ε``, where ``best``
   is the best fast gain so far and ``ε`` = :func:`~alscale.strategies.joint_entropy.fast_error_bound`;
2. with a grouped state, each chunk first gets the tighter grouped Jensen bound (G/M of
   the exact cost) and keeps only rows with a bound ``>= best - 2ε``;
3. those are scored with the fast float32 kernel (GEMM ``[n·C, K] x [K, M]``);
4. when more than a few scored rows are within ``2ε`` of the best fast gain (a long batch
   near its ``log K`` ceiling: every gain tiny), they are first scored with the same GEMM
   in float64 (:func:`~alscale.strategies.joint_entropy.float64_gains`, error ``ε64`` ≈
   1e-12) and only those within ``2ε64`` of the best float64 gain go on;
5. those are re-scored with the float64 reference kernel, whose bits depend on the row and
   the state only; the shard's answer is the best reference gain (ties: lower row_id).

Why this is exact and shard-invariant: let r* be the row with the best *reference* gain G in
the shard. Fast gains are within ε of G and bounds within ε of true upper bounds, so r*
is either scored (its fast gain is within 2ε of the best fast gain, so it is re-scored) or
one of its bounds was below ``best - 2ε``, which would make its G smaller than the fast-best
row's — impossible; the float64 stage keeps it by the same argument with ``ε64``. So every
shard returns its exact reference argmax, and the coordinator the global one: the same picks
and the same score bits for any shard count, chunk size, pruning on or off, grouping, thread
count, executor (local or Ray) or device, given the same seed. Pruning changes only the work
(measured in ``benchmarks/batchbald.py``; on data whose gains are all close to their BALD, the
bounds prune little and the work is that of ``prune: false``). Labelled rows never enter; a
pick is removed from its shard, so there are no duplicates.

``batchbald_prefilter`` (for very large pools) is an approximation by name: the exact global
top-``prefilter`` rows by BALD (sharded top-k), gathered to the coordinator, then BatchBALD
on their union (in-process). Its loss of joint MI against the full pool is measured in the
benchmark.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import progress
from alscale.strategies import spec as _spec
from alscale.strategies.joint_entropy import (
    MAX_CONFIGS_LIMIT,
    MAX_SAMPLES_LIMIT,
    BatchJoint,
    chunk_conditional_entropies,
    chunk_expected_entropies,
    exact_float32_matmul,
    farthest_point_centres,
    fast_error_bound,
    float64_error_bound,
    float64_gains,
    group_configs,
    grouped_state,
    ops_single_threaded,
    row_conditional_entropy,
    row_expected_entropy,
)
from alscale.strategies.scores import bald
from alscale.strategies.shards import FanoutShards, InProcessFanout, Shards, ShardState, shard_op
from alscale.types import Selection
from alscale.validation import check_budget

logger = logging.getLogger(__name__)

__all__ = [
    "BatchBALDStats",
    "batchbald_loop",
    "check_options",
    "default_prefilter",
    "select_batchbald",
    "select_batchbald_prefilter",
]

_KEY = "batchbald"
# Fast-path chunk on CPU: about this many bytes of π (float32 [n·C, M]); 4 MiB measured
# fastest of 1..16 MiB on a 2-core EPYC (GEMM and log stay in L2/L3).
_CPU_CHUNK_BYTES = 4 << 20
# Probabilities of a shard's candidates are cached ([N, C, K] float32, the size of the
# log-probs) when they fit in this many bytes on CPU, or in half the free memory on CUDA;
# otherwise they are recomputed from the log-probs chunk by chunk at every step.
_CPU_CACHE_BYTES = 1 << 30
# Set-up and bound passes go through the rows in blocks of about this many values.
_BLOCK_VALUES = 1 << 22
# Second-stage bound: configurations grouped G = min(M // _GROUP_RATIO, _MAX_GROUPS) ways
# (costs G/M of an exact evaluation per row; on a synthetic MNIST-shaped pool G = M/4 left
# 2-30 % of the rows that pass the one-group bound; G = M/16 .. M/2 measured). Used when the
# state has at least _GROUPED_MIN_CONFIGS configurations and the grouping (at the coordinator)
# costs less than half what it should save, estimated from the rows that passed the first
# bound at the previous step (_use_groups).
_GROUP_RATIO = 4
_MAX_GROUPS = 1024
_GROUPED_MIN_CONFIGS = 64
_FORCE_GROUPS = False  # tests: group at every step with >= _GROUPED_MIN_CONFIGS configurations
_MACS_PER_S = 2e9  # rough single-core float32/float64 multiply-add rate of the cost model
_FP_STEP_S = 60e-6  # Python overhead of one farthest-point step in group_configs
# More rows than this within the float32 margin of the best go through the float64 stage
# (_refine_float64) before the reference kernel.
_REFINE_MIN_ROWS = 8
# First fast chunk when pruning (doubles up to the full chunk): small, because the bound
# usually leaves few rows to score.
_FIRST_CHUNK_ROWS = 64
# Normalisation check at set-up: evenly spaced rows must have logsumexp_c within this of 0
# (the tolerance of alscale.strategies.scores).
_NORM_TOL = 0.25
_NORM_CHECK_ROWS = 512
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


def _opt_int(opts: dict[str, Any], key: str, lo: int, hi: int, *, allow_none: bool = False) -> None:
    value = opts[key]
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        none = " or null" if allow_none else ""
        raise AlscaleError(f"option {key} of strategy batchbald must be an integer in [{lo}, {hi}]{none}; "
                           f"got {short_repr(value)}")
    opts[key] = int(value)


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Range and type checks of the BatchBALD options (after the registry's generic checks).

    ``num_samples`` (M, default 1,000: the paper's and the reference's), ``max_configs``
    (exact joint entropy while C^n <= it; null = ``num_samples``), ``device`` (``auto``,
    ``cpu``, ``cuda``, ``cuda:N``; chosen in each shard's process), ``chunk_rows`` (fast-path
    rows per chunk; null = by memory), ``prune`` (Jensen-bound pruning; changes only the
    work), and for ``batchbald_prefilter`` ``prefilter`` (rows kept by BALD; null =
    :func:`default_prefilter`).
    """
    opts = dict(options)
    _opt_int(opts, "num_samples", 1, MAX_SAMPLES_LIMIT)
    _opt_int(opts, "max_configs", 1, MAX_CONFIGS_LIMIT, allow_none=True)
    _opt_int(opts, "chunk_rows", 1, 1 << 40, allow_none=True)
    if "prefilter" in opts:
        _opt_int(opts, "prefilter", 1, 1 << 40, allow_none=True)
    device = opts["device"]
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise AlscaleError("option device of strategy batchbald must be auto, cpu, cuda or cuda:N; "
                           f"got {short_repr(device)}")
    if not isinstance(opts["prune"], (bool, np.bool_)):
        raise AlscaleError(f"option prune of strategy batchbald must be true or false; got {short_repr(opts['prune'])}")
    opts["prune"] = bool(opts["prune"])
    return opts


def default_prefilter(budget: int) -> int:
    """Rows kept by the BALD prefilter when ``prefilter`` is null: ``max(2000, 50 * budget)``."""
    return max(2000, 50 * int(budget))


# --------------------------------------------------------------------------------------
# Shard side
# --------------------------------------------------------------------------------------


@dataclass
class BatchBALDShard:
    """One shard's BatchBALD state for one selection (in ``ShardState.strategy_state["batchbald"]``)."""

    device: Any  # torch.device
    pos_N: np.ndarray  # candidate -> position in the shard's arrays
    row_ids_N: np.ndarray
    alive_N: np.ndarray  # not picked yet
    eh_N: np.ndarray  # fast E_ω H(y|ω), float64
    probs_N_C_K: Any  # torch float32 [N, C, K] on device, or None (recomputed per chunk)
    k: int
    c: int
    chunk_rows: int | None
    prune: bool
    threads: int  # chunks evaluated concurrently (CPU), each op single-threaded
    pool: ThreadPoolExecutor | None


def _resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AlscaleError(f"option device {short_repr(name)} of strategy batchbald: CUDA is not available here; "
                           "use auto or cpu")
    return torch.device(name)


def _map(cache: BatchBALDShard, fn: Callable[[Any], Any], items: list) -> list:
    if cache.pool is None or len(items) < 2:
        return [fn(x) for x in items]
    return list(cache.pool.map(fn, items))


def _check_normalised(log_probs_N_K_C: np.ndarray, pos_N: np.ndarray) -> None:
    if pos_N.size == 0:
        return
    rows = pos_N[np.unique(np.linspace(0, pos_N.size - 1, min(pos_N.size, _NORM_CHECK_ROWS)).astype(np.int64))]
    x = np.asarray(log_probs_N_K_C[rows], dtype=np.float64)
    top = x.max(axis=2, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        lse = top[..., 0] + np.log(np.exp(x - top).sum(axis=2))
    bad = ~(np.abs(lse) <= _NORM_TOL)
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise AlscaleError(
            f"strategy batchbald needs normalised log-probabilities; at shard row {int(rows[i])}, sample {int(k)} "
            f"the probabilities sum to {float(np.exp(lse[i, k])):.6g}: pass log_softmax(logits)"
        )


def _to_device(x: np.ndarray, device: Any, dtype: Any = np.float32) -> Any:
    """A torch copy/view of ``x`` on ``device`` (read-only arrays, e.g. from Ray, are copied)."""
    import torch

    arr = np.ascontiguousarray(x, dtype=dtype)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).to(device)


def _probs_chunk(state: ShardState, cache: BatchBALDShard, cand: np.ndarray) -> Any:
    """float32 ``[n, C, K]`` probabilities of candidates ``cand`` on the cache's device."""
    import torch

    if cache.probs_N_C_K is not None:
        if cand.size and cand[-1] - cand[0] == cand.size - 1 and np.all(np.diff(cand) == 1):
            return cache.probs_N_C_K[int(cand[0]) : int(cand[-1]) + 1]
        return cache.probs_N_C_K.index_select(0, torch.from_numpy(cand).to(cache.device))
    lp = _to_device(state.log_probs_N_K_C[cache.pos_N[cand]], cache.device)
    return torch.exp(lp).transpose(1, 2).contiguous()


class SetupInfo(NamedTuple):
    """What :func:`setup` reports: the shard's candidates and its log-probs' K and C."""

    n_candidates: int
    k: int
    c: int


@shard_op
def setup(state: ShardState, device: str, chunk_rows: int | None, prune: bool) -> SetupInfo:
    """Start a BatchBALD selection on this shard."""
    import torch

    lp = state.log_probs_N_K_C
    if lp is None:
        raise AlscaleError("strategy batchbald needs log-probs [N, K, C], but this shard has none")
    _, k, c = lp.shape
    pos = np.flatnonzero(state.candidates_N)
    _check_normalised(lp, pos)
    dev = _resolve_device(device)
    n = int(pos.size)
    if dev.type == "cuda":
        budget, threads = torch.cuda.mem_get_info(dev)[0] // 2, 1
    else:
        budget, threads = _CPU_CACHE_BYTES, max(1, torch.get_num_threads())
    probs = torch.empty((n, c, k), dtype=torch.float32, device=dev) if n * k * c * 4 <= budget else None
    cache = BatchBALDShard(
        device=dev,
        pos_N=pos,
        row_ids_N=state.row_ids_N[pos],
        alive_N=np.ones(n, dtype=bool),
        eh_N=np.empty(n, dtype=np.float64),
        probs_N_C_K=probs,
        k=int(k),
        c=int(c),
        chunk_rows=chunk_rows,
        prune=bool(prune),
        threads=threads,
        pool=ThreadPoolExecutor(threads, thread_name_prefix="batchbald") if threads > 1 else None,
    )

    def block(span: tuple[int, int]) -> None:
        start, stop = span
        x = _to_device(lp[pos[start:stop]], dev)
        q = torch.exp(x)
        cache.eh_N[start:stop] = chunk_expected_entropies(x, q).cpu().numpy()
        if probs is not None:
            probs[start:stop] = q.transpose(1, 2)

    rows = max(1, _BLOCK_VALUES // (k * c))
    with ops_single_threaded(cache.pool is not None):
        _map(cache, block, [(s, min(s + rows, n)) for s in range(0, n, rows)])
    state.strategy_state[_KEY] = cache
    logger.debug("batchbald set-up: %d candidates on %s (probabilities cached: %s)", n, dev, probs is not None)
    return SetupInfo(n, int(k), int(c))


def _fast_rows(cache: BatchBALDShard, m: int) -> int:
    """Fast-path rows per chunk: the option, else by memory (CPU: ~4 MiB of π; CUDA: free/4)."""
    if cache.chunk_rows is not None:
        return cache.chunk_rows
    if cache.device.type == "cuda":
        import torch

        per_row = 4 * (2 * cache.c * m + 3 * cache.c * cache.k)
        return max(1, int(torch.cuda.mem_get_info(cache.device)[0] // 4 // per_row))
    return max(1, _CPU_CHUNK_BYTES // (4 * cache.c * m))


@dataclass(frozen=True)
class StepOffer:
    """A shard's best row for one step."""

    gain: float  # reference Ĥ(y|A) - E H(y|ω)
    row_id: int
    log_probs_K_C: np.ndarray
    expected_entropy: float
    n_passed: int  # rows past the one-group bound
    n_bounded: int  # rows given the grouped bound
    n_scored: int  # rows scored by the fast kernel against the full state
    n_reference: int  # rows re-scored by the reference kernel


@shard_op
def step(
    state: ShardState,
    post_M_K: np.ndarray,
    weights_M: np.ndarray,
    centres_G_K: np.ndarray | None,
    masses_G: np.ndarray | None,
    picked_row_id: int | None,
    final: bool,
) -> StepOffer | None:
    """One greedy step on this shard: drop the previous pick, return the best row (or None).

    ``post_M_K``, ``weights_M``: the batch's joint state; ``centres_G_K``, ``masses_G``: the
    grouped state of the second-stage bound, or None. (Flat arguments, so that a Ray fan-out
    puts each array into the object store once for all shards.)
    """
    cache = state.strategy_state.get(_KEY)
    if cache is None:
        raise RuntimeError("batchbald: setup must run on this shard before step")
    try:
        if picked_row_id is not None:
            cache.alive_N[cache.row_ids_N == picked_row_id] = False
        idx = np.flatnonzero(cache.alive_N)
        if idx.size == 0:
            return None
        with ops_single_threaded(cache.pool is not None), exact_float32_matmul():
            grouped = None if centres_G_K is None else (centres_G_K, masses_G)
            return _best_offer(state, cache, (post_M_K, weights_M), grouped, idx)
    finally:
        if final:
            state.strategy_state.pop(_KEY, None)
            if cache.pool is not None:
                cache.pool.shutdown(wait=False)


@shard_op
def prefilter_scores(state: ShardState) -> None:
    """Rank this shard's rows by BALD (Houlsby et al. 2011), BatchBALD's gain of a one-row
    batch: the ranking key of ``batchbald_prefilter``'s top-k."""
    if state.log_probs_N_K_C is None:
        raise AlscaleError("strategy batchbald_prefilter needs log-probs [N, K, C], but this shard has none")
    state.use_scores(bald(state.log_probs_N_K_C))


def _state_tensors(cache: BatchBALDShard, post_M_K: np.ndarray, weights_M: np.ndarray) -> tuple[Any, Any]:
    return _to_device(post_M_K.T, cache.device), _to_device(weights_M, cache.device, np.float64)


@dataclass
class _Step:
    """One greedy step on one shard: the batch's joint state (as arrays and on the device), the
    grouped state of the second bound, the margin ``2ε``, the best fast gain so far and the
    work counters."""

    state: ShardState
    cache: BatchBALDShard
    post_M_K: np.ndarray
    weights_M: np.ndarray
    post_t: Any
    w_t: Any
    group_t: tuple[Any, Any] | None
    margin: float
    rows_full: int  # fast-path rows per chunk
    best: float = -math.inf
    n_passed: int = 0
    n_bounded: int = 0


def _best_offer(
    state: ShardState,
    cache: BatchBALDShard,
    full: tuple[np.ndarray, np.ndarray],
    grouped: tuple[np.ndarray, np.ndarray] | None,
    idx: np.ndarray,
) -> StepOffer:
    """The shard's exact reference argmax of the gain among the live rows ``idx`` (module
    docstring: bound, group-bound, fast-score, re-score)."""
    post_M_K, weights_M = full
    post_t, w_t = _state_tensors(cache, post_M_K, weights_M)
    step = _Step(state, cache, post_M_K, weights_M, post_t, w_t, None, 2 * fast_error_bound(cache.k, cache.c),
                 _fast_rows(cache, post_M_K.shape[0]))
    if cache.prune:
        order, ub_sorted = _bound_order(step, idx)
        size = min(_FIRST_CHUNK_ROWS, step.rows_full)
        step.group_t = _state_tensors(cache, *grouped) if grouped is not None else None
    else:
        order, ub_sorted, size = idx, None, step.rows_full
    cand_all, g_all = _score_waves(step, order, ub_sorted, size)
    return _reference_pick(step, cand_all, g_all)


def _bound_order(step: _Step, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1 for every live row: the one-group bound (all configurations in one group);
    returns the rows by decreasing bound (ties: lower row_id) and their bounds."""
    cache = step.cache
    mean_t, one_t = _state_tensors(cache, (step.weights_M @ step.post_M_K)[None, :], np.ones(1))

    def bound(cand: np.ndarray) -> np.ndarray:
        return chunk_conditional_entropies(mean_t, one_t, _probs_chunk(step.state, cache, cand)).cpu().numpy()

    block = max(1, _BLOCK_VALUES // (cache.k * cache.c))
    ub = np.concatenate(_map(cache, bound, [idx[s:s + block] for s in range(0, idx.size, block)]))
    ub -= cache.eh_N[idx]
    perm = np.lexsort((cache.row_ids_N[idx], -ub))
    return idx[perm], ub[perm]


def _score_waves(step: _Step, order: np.ndarray, ub_sorted: np.ndarray | None, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Fast gains of the rows in ``order``, in waves of chunks (one per thread; chunks double
    up to the full size) until the next bound is below ``best - 2ε``; returns the scored rows
    and their fast gains."""
    cache = step.cache
    scored: list[np.ndarray] = []
    gains: list[np.ndarray] = []
    start = 0
    while start < order.size:
        threshold = step.best - step.margin
        wave = []
        while len(wave) < cache.threads and start < order.size:
            if ub_sorted is not None and ub_sorted[start] < threshold:
                break  # no row left can beat the best (see the module docstring)
            wave.append(order[start:start + size])
            step.n_passed += wave[-1].size
            start += size
        if not wave:
            break
        for cand, g, bounded in _map(cache, lambda c, t=threshold: _score_chunk(step, c, t), wave):
            step.n_bounded += bounded
            if cand.size:
                scored.append(cand)
                gains.append(g)
                step.best = max(step.best, float(g.max()))
        size = min(2 * size, step.rows_full)
    return np.concatenate(scored), np.concatenate(gains)


def _score_chunk(step: _Step, cand: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Stage 2 (the grouped bound against the best at wave start, when there is a grouped
    state) then stage 3 (the fast kernel against the full state) for one chunk of rows;
    returns the rows kept, their fast gains and how many rows got the grouped bound."""
    import torch

    cache = step.cache
    probs = _probs_chunk(step.state, cache, cand)
    bounded = 0
    if step.group_t is not None:
        ub2 = chunk_conditional_entropies(step.group_t[0], step.group_t[1], probs).cpu().numpy() - cache.eh_N[cand]
        keep = ub2 >= threshold
        bounded = cand.size
        if not keep.all():
            cand = cand[keep]
            probs = probs[torch.from_numpy(np.flatnonzero(keep)).to(probs.device)]
    if cand.size == 0:
        return cand, np.empty(0), bounded
    h = chunk_conditional_entropies(step.post_t, step.w_t, probs).cpu().numpy()
    return cand, h - cache.eh_N[cand], bounded


def _reference_pick(step: _Step, cand_all: np.ndarray, g_all: np.ndarray) -> StepOffer:
    """Stages 4-5: every scored row within ``2ε`` of the best fast gain (narrowed by the float64
    stage when there are many), re-scored with the float64 reference kernel in row_id order;
    the best reference gain wins (ties: lower row_id)."""
    cache = step.cache
    short = cand_all[g_all >= step.best - step.margin]
    if short.size > _REFINE_MIN_ROWS:  # the float64 stage (module docstring, step 4)
        short = _refine_float64(step.state, cache, step.post_M_K, step.weights_M, short)
    short = short[np.argsort(cache.row_ids_N[short], kind="stable")]
    lp = step.state.log_probs_N_K_C
    post_T_K_M = np.ascontiguousarray(step.post_M_K.T, dtype=np.float64)
    seen: set[bytes] = set()
    best_gain, best_i, best_eh, n_ref = -math.inf, -1, 0.0, 0
    for i in short:  # row_id order: a strictly better gain is needed to replace
        row_K_C = np.asarray(lp[cache.pos_N[i]])
        key = row_K_C.tobytes()
        if key in seen:  # identical rows have identical gains; the lower row_id came first
            continue
        seen.add(key)
        eh = row_expected_entropy(row_K_C)
        gain = row_conditional_entropy(post_T_K_M, step.weights_M, row_K_C) - eh
        n_ref += 1
        if gain > best_gain:
            best_gain, best_i, best_eh = gain, int(i), eh
    return StepOffer(
        gain=best_gain,
        row_id=int(cache.row_ids_N[best_i]),
        log_probs_K_C=np.array(lp[cache.pos_N[best_i]], copy=True),
        expected_entropy=best_eh,
        n_passed=step.n_passed,
        n_bounded=step.n_bounded,
        n_scored=int(cand_all.size),
        n_reference=n_ref,
    )


def _refine_float64(
    state: ShardState, cache: BatchBALDShard, post_M_K: np.ndarray, weights_M: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """The rows of ``rows`` whose float64 gain is within ``2 ε64`` of the best float64 gain
    (:func:`~alscale.strategies.joint_entropy.float64_gains`, ``ε64`` =
    :func:`~alscale.strategies.joint_entropy.float64_error_bound`).

    Exact for the same reason as the float32 stage: the shard's best reference row r* (and
    every row tied with it) is in ``rows``; its float64 gain is at least ``G* - ε64`` and no
    row's exceeds ``G* + ε64``, so it is kept. Only the work changes: once every gain is
    within the float32 margin of the best (a long batch near the ``log K`` ceiling), the
    reference kernel would otherwise run on every row (measured: all 20,000 rows per step
    after 45 picks, K = 20, C = 10, M = 1,000); after this stage, on one or two.
    """
    import torch

    m = post_M_K.shape[0]
    post_t, w_t = (_to_device(post_M_K.T, cache.device, np.float64), _to_device(weights_M, cache.device, np.float64))
    lp = state.log_probs_N_K_C
    size = max(1, _CPU_CHUNK_BYTES // (8 * cache.c * m))
    spare: queue.SimpleQueue = queue.SimpleQueue()  # one workspace per thread, reused chunk after chunk
    for _ in range(min(cache.threads, -(-rows.size // size))):
        spare.put(torch.empty(2 * size * cache.c * m, dtype=torch.float64, device=cache.device))

    def score(cand: np.ndarray) -> np.ndarray:
        work = spare.get()
        try:
            lp64 = _to_device(lp[cache.pos_N[cand]], cache.device, np.float64)
            return float64_gains(post_t, w_t, lp64, work).cpu().numpy()
        finally:
            spare.put(work)

    gains = np.concatenate(_map(cache, score, [rows[s : s + size] for s in range(0, rows.size, size)]))
    return rows[gains >= gains.max() - 2 * float64_error_bound(cache.k, cache.c, m)]


# --------------------------------------------------------------------------------------
# Coordinator side: the greedy loop
# --------------------------------------------------------------------------------------


@dataclass
class BatchBALDStats:
    """Work done by one selection (for benchmarks and logs)."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    round_trips: int = 0
    seconds: float = 0.0

    @property
    def rows_scored(self) -> int:
        return int(sum(s["scored"] for s in self.steps))


_SETUP = f"{__name__}.setup"
_STEP = f"{__name__}.step"
_PREFILTER = f"{__name__}.prefilter_scores"


def _use_groups(m: int, k: int, c: int, n_groups: int, passed: int) -> bool:
    """Whether grouping the M configurations for the second bound should pay off (work only)."""
    if m < _GROUPED_MIN_CONFIGS or n_groups < 1:
        return False
    if _FORCE_GROUPS:
        return True
    n_fp = farthest_point_centres(m, k, n_groups)
    cost_s = (n_fp * m * k + 2 * m * k * n_groups) / _MACS_PER_S + n_fp * _FP_STEP_S
    saving_s = passed * (m - n_groups) * k * c / _MACS_PER_S
    return saving_s >= 2 * cost_s


def _warn_saturated(i: int, gain: float, joint_mi: float, k: int, c: int) -> bool:
    """Say once when the best gain falls below the float32 resolution while the batch's joint
    mutual information is near its ceiling ``log K`` (not when the rows simply carry no
    information); returns whether it did."""
    if gain >= fast_error_bound(k, c) or joint_mi < 0.5 * math.log(k):
        return False
    logger.warning(
        "batchbald: pick %d gains only %.2g nats: the batch's joint mutual information has reached its ceiling "
        "log K = %.2f nats (K = %d posterior samples), so the remaining picks are decided by negligible differences "
        "and each costs a full pass over the pool; use more samples (model.mc_samples) or a smaller budget",
        i + 1, gain, math.log(k), k)
    return True


def batchbald_loop(
    shards: Shards,
    budget: int,
    *,
    options: Mapping[str, Any],
    seed: int = 0,
    round: int = 0,
    strategy: str = "batchbald",
) -> tuple[Selection, BatchBALDStats]:
    """Greedy BatchBALD over every candidate of ``shards``; returns the selection and stats.

    ``options`` must be checked (:func:`check_options`). Labelled rows must already be
    excluded. ``indices_B`` are row ids in pick order; ``scores_B`` the cumulative joint MI.
    """
    t0 = time.perf_counter()
    budget = check_budget(budget)
    trips0 = shards.round_trips
    k, c, n_cand = _setup(shards, options, strategy)
    if budget > n_cand:
        logger.warning("budget %d exceeds the %d unlabelled rows; selecting all of them", budget, n_cand)
    b = min(budget, n_cand)
    joint = BatchJoint.empty(
        k, c, max_configs=options["max_configs"], num_samples=options["num_samples"], seed=seed, round=round
    )
    run = _Greedy(shards, options, joint, k, c)
    for i in range(b):
        _greedy_step(run, final=i == b - 1)
    if b == 0:
        shards.call(_STEP, joint.post_M_K, joint.weights_M, None, None, None, True)  # frees the caches
    run.stats.round_trips = shards.round_trips - trips0
    run.stats.seconds = time.perf_counter() - t0
    sel = Selection(indices_B=np.asarray(run.picks, dtype=np.int64), scores_B=np.asarray(run.scores, dtype=np.float64),
                    strategy=strategy)
    return sel, run.stats


def _setup(shards: Shards, options: Mapping[str, Any], strategy: str) -> tuple[int, int, int]:
    """Set every shard up (one fan-out); returns the log-probs' K and C and the candidates."""
    infos: list[SetupInfo] = shards.call(_SETUP, options["device"], options["chunk_rows"], options["prune"])
    shapes = {(i.k, i.c) for i in infos if i.n_candidates > 0} or {(i.k, i.c) for i in infos}
    if len(shapes) != 1:
        raise AlscaleError(f"shards disagree on the log-probs shape [K, C]: {sorted(shapes)}")
    k, c = shapes.pop()
    if k < 2:
        raise AlscaleError(f"strategy {strategy} needs K >= 2 samples on the middle axis of log_probs; got K = {k}")
    return k, c, int(sum(i.n_candidates for i in infos))


@dataclass
class _Greedy:
    """The greedy loop at the coordinator: the batch's joint state, the picks and their
    cumulative scores, the last pick (dropped by its shard at the next step) and the rows
    that passed the first bound at the last step (for the grouping's cost model)."""

    shards: Shards
    options: Mapping[str, Any]
    joint: BatchJoint
    k: int
    c: int
    stats: BatchBALDStats = field(default_factory=BatchBALDStats)
    picks: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    sum_eh: float = 0.0
    picked: int | None = None
    passed: int = 0
    saturated: bool = False  # said that the batch reached its log K ceiling


def _greedy_step(run: _Greedy, final: bool) -> None:
    """One pick: every shard's best row (one fan-out), the global best (ties: lower row_id)."""
    ts = time.perf_counter()
    joint = run.joint
    centres_G_K, masses_G = _grouping(run)
    offers = run.shards.call(_STEP, joint.post_M_K, joint.weights_M, centres_G_K, masses_G, run.picked, final)
    best: StepOffer | None = None
    for o in offers:
        if o is not None and (best is None or o.gain > best.gain or (o.gain == best.gain and o.row_id < best.row_id)):
            best = o
    assert best is not None  # n_cand > i rows are left
    run.picks.append(best.row_id)
    run.scores.append(joint.entropy - run.sum_eh + best.gain)
    progress.advance()
    live = [o for o in offers if o is not None]
    record = {"mode": joint.mode, "configs": joint.n_configs, "passed": int(sum(o.n_passed for o in live)),
              "bounded": int(sum(o.n_bounded for o in live)), "scored": int(sum(o.n_scored for o in live)),
              "reference": int(sum(o.n_reference for o in live)), "seconds": 0.0}
    run.stats.steps.append(record)
    run.sum_eh += best.expected_entropy
    run.saturated = run.saturated or _warn_saturated(len(run.picks) - 1, best.gain, run.scores[-1], run.k, run.c)
    run.passed = record["passed"]
    run.picked = best.row_id
    if not final:
        joint.extend(best.log_probs_K_C)
    record["seconds"] = time.perf_counter() - ts
    logger.debug("batchbald step %d: %s", len(run.picks) - 1, record)


def _grouping(run: _Greedy) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The grouped state ``(centres_G_K, masses_G)`` of the second bound, when it pays off."""
    joint = run.joint
    n_groups = min(joint.n_configs // _GROUP_RATIO, _MAX_GROUPS)
    if not (run.options["prune"] and _use_groups(joint.n_configs, run.k, run.c, n_groups, run.passed)):
        return None, None
    labels_M = group_configs(joint.post_M_K, joint.weights_M, n_groups)
    return grouped_state(joint.post_M_K, joint.weights_M, labels_M)


def select_batchbald(
    shards: Shards, budget: int, *, options: Mapping[str, Any], seed: int = 0, round: int = 0
) -> Selection:
    """The registry's ``batchbald``: greedy BatchBALD over the whole pool."""
    return batchbald_loop(shards, budget, options=check_options(options), seed=seed, round=round)[0]


def prefilter_loop(
    shards: Shards, budget: int, *, options: Mapping[str, Any], seed: int = 0, round: int = 0
) -> tuple[Selection, BatchBALDStats]:
    """BatchBALD on the exact global top-``prefilter`` rows by BALD, gathered to the coordinator.

    Four round trips whatever the budget (candidates, BALD scores, top-k, gather); the
    greedy loop then runs in-process on the union (sorted by row_id).
    """
    t0 = time.perf_counter()
    budget = check_budget(budget)
    opts = check_options(options)
    trips0 = shards.round_trips
    p = opts["prefilter"] if opts.get("prefilter") is not None else default_prefilter(budget)
    p = min(p, shards.n_candidates())
    shards.call(_PREFILTER)
    _, ids = shards.topk(p)
    parts = shards.take(np.sort(ids), ("log_probs",), where="candidates")
    row_ids = np.concatenate([p.row_ids_R for p in parts]) if parts else np.empty(0, np.int64)
    lps = [p.log_probs_R_K_C for p in parts if p.log_probs_R_K_C is not None and p.log_probs_R_K_C.shape[0]]
    if not lps:
        raise AlscaleError("strategy batchbald_prefilter: no unlabelled rows to select from")
    lp = np.concatenate(lps)
    order = np.argsort(row_ids, kind="stable")
    local = FanoutShards(InProcessFanout([ShardState(row_ids[order], lp[order])]))
    inner = {key: value for key, value in opts.items() if key != "prefilter"}
    sel, stats = batchbald_loop(local, budget, options=inner, seed=seed, round=round, strategy="batchbald_prefilter")
    stats.round_trips = shards.round_trips - trips0
    stats.seconds = time.perf_counter() - t0
    return sel, stats


def select_batchbald_prefilter(
    shards: Shards, budget: int, *, options: Mapping[str, Any], seed: int = 0, round: int = 0
) -> Selection:
    """The registry's ``batchbald_prefilter``: BatchBALD on the top rows by BALD."""
    return prefilter_loop(shards, budget, options=options, seed=seed, round=round)[0]


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class BatchBALDOptions(_spec.StrategyOptions):
    """Options of ``batchbald`` (documented in :func:`check_options`)."""

    num_samples: int = 1000
    max_configs: int | None = None
    device: str = "auto"
    chunk_rows: int | None = None
    prune: bool = True

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


@dataclass(frozen=True)
class PrefilterOptions(BatchBALDOptions):
    """Options of ``batchbald_prefilter``: BatchBALD's, and ``prefilter`` (rows kept by BALD)."""

    prefilter: int | None = None


_NEEDS = _spec.Needs(log_probs=True, min_samples=2)
_SUPPORTS = _spec.Supports(keeps=("log_probs",))
SPECS = (
    _spec.StrategySpec(
        "batchbald", "loop",
        "greedy joint mutual information of the batch's labels and the weights (Kirsch et al., NeurIPS 2019)",
        options_type=BatchBALDOptions, needs=_NEEDS, supports=_SUPPORTS, select=select_batchbald),
    _spec.StrategySpec(
        "batchbald_prefilter", "loop",
        "BatchBALD on the top-`prefilter` rows by BALD (approximate; Kirsch et al., NeurIPS 2019)",
        options_type=PrefilterOptions, needs=_NEEDS, supports=_SUPPORTS, select=select_batchbald_prefilter),
)

