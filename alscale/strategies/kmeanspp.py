"""k-means++ seeding over shards, exact and reproducible for any shard count; and k-means‖.

Two spaces share one loop:

- ``"badge"``: BADGE gradient embeddings ``g = a ⊗ h`` (Ash et al., "Deep Batch Active
  Learning by Diverse, Uncertain Gradient Lower Bounds", ICLR 2020), never materialised:
  ``‖g_i − g_j‖² = ‖a_i‖²‖h_i‖² + ‖a_j‖²‖h_j‖² − 2(a_i·a_j)(h_i·h_j)`` (DESIGN §1.4; the
  factorisation is also in the BADGE reference code since 2023, after Zhang et al., arXiv
  2306.09910 App. D). ``a`` comes from :func:`alscale.strategies.kmeanspp_kernels.gradient_factors`.
- ``"embedding"``: plain k-means++ (Arthur & Vassilvitskii, "k-means++: The Advantages of
  Careful Seeding", SODA 2007) over the embeddings, i.e. the same formula with ``a ≡ 1``.

**Exact mode** (:func:`seed_exact`). First center: for BADGE the candidate with the largest
``‖g‖²`` (as the reference code does), for plain k-means++ a uniformly random candidate
(the keyed uniform with the smallest value); ties go to the lower ``row_id``. Every next
center is drawn with probability ∝ ``D²`` = squared distance to the nearest chosen center
(textbook D² sampling). Labelled rows are not candidates and are not centers (the BADGE
paper seeds on the unlabelled pool only).

How it is sharded (DESIGN §3, stale-bound rejection). Shards keep, for each candidate, a
weight ``u_i ≥ s_i``, where ``s_i`` is its exact D² to the centers *synced* so far
(``u_i = grid_ceil(s_i)``, at most 3% above). The coordinator draws proposals ∝ ``u`` and
accepts proposal ``i`` with probability ``w_i / u_i``, where ``w_i`` is its exact current D²
(to the synced centers and to those picked since the last sync, which the coordinator
holds; it recomputes ``w_i`` from the row's factors). Each trial accepts ``i`` with
probability ∝ ``w_i``, so an accepted row is *exactly* D²-distributed. Proposals come in
batches; new centers go to the shards in one batched update when a batch is used up or
the pending centers reach ``clamp(picks so far, 16, 1024)``; round trips grow like log B.

Why the result does not depend on the shard count (nor on local vs Ray, nor on BLAS):

1. *Exact distances.* Factors are stored as per-row fixed-point numbers
   (:func:`quantize_rows`: ``F`` fraction bits relative to the row's largest power of two,
   exact in float32), chosen so that every partial sum of a dot product of two stored rows
   is an integer multiple of one unit below ``2**53``: their float64 GEMMs are exact
   whatever the summation order, blocking or thread split, and the element-wise float64
   steps are the same code on the same values. So the exact D² (:func:`min_sq_dist`) is a
   function of the row and the centers alone. (Rounding to F ≥ 21 bits moves a distance by
   about 1e-6 relative — the size of float32 GEMM error.)
2. *Exact weights from fast GEMMs.* Shards compute float32 GEMMs with a rigorous error
   bound (:func:`filter_kappa`, :func:`bound_min_sq_dist`) and keep ``u = grid_ceil(s)``
   (6 significant bits): wherever the bounds fall inside one grid cell that is the value;
   the few rows whose bounds straddle a cell edge (or may be 0) go through the exact float64
   kernel. Either way ``u_i`` is the same function of the row and the centers.
3. *Integer proposal weights.* ``q_i = ceil(u_i · 2^e)`` with one global ``e`` (from an
   upper bound of all weights, so the total stays below 2**62). Integer sums are
   associative, so every prefix sum — per shard, over shards, in any grouping — is exact.
4. *Proposals invert the global CDF.* Trial ``n`` takes 104 keyed random bits ``K_n``
   (``noise.keyed_uniform`` of ``(seed, round, n)``) and the target ``t = ⌊K_n · Q / 2^104⌋``
   in ``[0, Q)``; the proposal is the row whose prefix interval in the global row order
   holds ``t``: the coordinator finds the shard from the shards' integer masses, the shard
   the row by ``searchsorted`` on its int64 prefix sums. Same row for any contiguous split.
5. *Acceptance* compares a keyed uniform of trial ``n`` with ``w_i · 2^e / q_i ≤ 1`` (the
   ceilings are corrected, not approximated). The sync schedule depends only on these
   decisions. Hence the selection is a function of (seed, round, pool rows in order,
   labelled set). The factors of BADGE go through ``numpy.exp``, which may differ in the
   last bit between CPU instruction sets; that could move a 23-bit factor (odds ~2^-29 per
   value), so bit-identical results across *different* machine types are likely, not proven.

Unexamined proposals are dropped at a sync and their trial numbers reused: no decision
looked at them, so the reused keys are still fresh. If every remaining candidate sits at
distance 0 from a center (D² mass 0), the rest are taken in keyed-uniform order.

**k-means‖** (:func:`~alscale.strategies.kmeans_parallel.seed_parallel`; Bahmani et al.,
"Scalable K-Means++", VLDB 2012): start from the same first center, then ``rounds`` times add
every candidate independently with probability ``min(1, ℓ·u/φ)`` (``ℓ = oversampling · B``;
``u`` the weight above, φ their sum), weight each candidate by the number of rows nearest to
it (up to the weight grid), and run weighted k-means++ on the candidates at the coordinator
(no Lloyd steps: the picks must be rows). Approximate by name (DESIGN §1.5);
``benchmarks/selection_badge.py`` measures its cost against exact.

Modules: this one holds the exact seeding and the specs; the shard state and ops (the mass
family) are in :mod:`~alscale.strategies.kmeanspp_shard`, what both seedings share at the
coordinator in :mod:`~alscale.strategies.kmeanspp_centers`, k-means‖ in
:mod:`~alscale.strategies.kmeans_parallel`, the kernels in
:mod:`~alscale.strategies.kmeanspp_kernels`.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alscale.errors import AlscaleError
from alscale.strategies import progress
from alscale.strategies import spec as _spec
from alscale.strategies.kmeans_parallel import (
    ParallelOptions,
    check_parallel_options,
    seed_parallel,
    select_kmeans_parallel,
)
from alscale.strategies.kmeanspp_centers import (
    FIRST_BOUND,
    SPACES,
    Centers,
    SeedingStats,
    check_space,
    rest,
    selection,
    start,
    sync,
)
from alscale.strategies.kmeanspp_kernels import (
    _S_ACCEPT,
    _keyed,
    bound_min_sq_dist,
    exact_sq_norms,
    filter_kappa,
    fixed_point_bits,
    grid_ceil,
    min_sq_dist,
    prepare_centers,
    quantize_rows,
    quantize_rows_,
    scale_exponent,
    seeding_cost,
    trial_bits,
    trial_uniforms,
)
from alscale.strategies.kmeanspp_shard import OP, Proposals
from alscale.strategies.shards import Shards
from alscale.types import Selection

logger = logging.getLogger(__name__)

__all__ = [
    "SPACES",
    "ParallelOptions",
    "SeedingStats",
    "check_parallel_options",
    "exact_sq_norms",
    "bound_min_sq_dist",
    "filter_kappa",
    "fixed_point_bits",
    "grid_ceil",
    "min_sq_dist",
    "prepare_centers",
    "quantize_rows",
    "quantize_rows_",
    "seed_exact",
    "seed_parallel",
    "seeding_cost",
    "select_kmeans_parallel",
    "select_kmeanspp",
    "trial_uniforms",
]

_PROPOSAL_BYTES = 64 << 20  # most factor bytes one proposal batch carries
#: Consecutive proposals a quota gate may refuse before the rest is filled in keyed random
#: order among the allowed rows (their D² mass is then negligible or zero).
_MAX_REFUSED = 20_000


@dataclass
class _Batch:
    """A batch of proposals for trials ``first .. first + len - 1`` (one stale state)."""

    first: int
    row_ids: np.ndarray
    w: np.ndarray  # exact D² to the synced centers
    q: np.ndarray
    a: np.ndarray | None
    h: np.ndarray
    n: np.ndarray
    v: np.ndarray  # acceptance uniforms

    def __len__(self) -> int:
        return int(self.row_ids.shape[0])


def _concat(parts: Sequence[Proposals]) -> Proposals:
    """The shards' proposals in shard order, one array per field."""
    a = None if parts[0].a_R_C is None else np.concatenate([p.a_R_C for p in parts])
    return Proposals(np.concatenate([p.row_ids_R for p in parts]), np.concatenate([p.q_R for p in parts]), a,
                     np.concatenate([p.h_R_D for p in parts]), np.concatenate([p.n_R for p in parts]))


def _fetch(
    shards: Shards, masses: Sequence[int], synced: Centers, seed: int, round: int, first: int, count: int
) -> _Batch:
    """Proposals for trials ``first .. first+count-1``: global inverse CDF of the integer weights."""
    trials = np.arange(first, first + count, dtype=np.int64)
    total = sum(masses)
    ends = np.cumsum([0, *masses]).tolist()  # Python ints: exact
    per_shard: list[list[int]] = [[] for _ in masses]
    where: list[tuple[int, int]] = []
    for k in trial_bits(seed, round, trials):
        t = (k * total) >> 104
        s = bisect.bisect_right(ends, t) - 1
        where.append((s, len(per_shard[s])))
        per_shard[s].append(t - ends[s])
    parts = shards.call_each(OP + "kpp_propose", [(np.array(t, dtype=np.int64),) for t in per_shard])
    # Back to trial order: position of each proposal in the shard-order concatenation.
    offsets = np.cumsum([0] + [len(t) for t in per_shard])
    pos = np.array([offsets[s] + i for s, i in where], dtype=np.int64)
    cat = _concat(parts)
    a = None if cat.a_R_C is None else cat.a_R_C[pos]
    h, n = cat.h_R_D[pos], cat.n_R[pos].astype(np.float64)
    return _Batch(
        first=first,
        row_ids=cat.row_ids_R[pos].astype(np.int64),
        w=synced.min_dist(a, h, n),
        q=cat.q_R[pos].astype(np.int64),
        a=a,
        h=h,
        n=n,
        v=_keyed(seed, round, _S_ACCEPT, trials),
    )


def _batch_size(cap: int, alpha: float, c: int, d: int) -> int:
    """Proposals to fetch for ``cap`` picks at acceptance ``alpha`` (bounded in bytes)."""
    want = math.ceil(1.25 * cap / alpha) + 16
    return max(16, min(want, _PROPOSAL_BYTES // (4 * (c + d) + 32)))


@dataclass
class _Seeding:
    """One exact seeding at the coordinator: its sizes and randomness, the centers picked since
    the last sync (``pending``) and those synced, the picks, and the counters."""

    shards: Shards
    name: str
    seed: int
    round: int
    k: int
    n_cand: int
    filtered: bool
    allow: Any
    pending: Centers
    synced: Centers
    bound: float
    picks: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    chosen: set[int] = field(default_factory=set)
    e: int = 0  # the scale of the shards' integer weights since the last sync
    trial: int = 0
    syncs: int = 0
    accepted: int = 0
    exact_rows: int = 0
    alpha: float = 1.0  # acceptance rate of the last period (sizes the next batch)
    refused: int = 0  # proposals the gate refused since the last accepted pick

    def pick(self, row: int, score: float) -> None:
        self.picks.append(row)
        self.scores.append(score)
        self.chosen.add(row)
        progress.advance()
        if self.allow is not None:
            self.allow.picked(row)


# Outcomes of one trial.
_SKIP, _ACCEPT, _STOP = 0, 1, 2


def seed_exact(
    shards: Shards,
    budget: int,
    *,
    space: str,
    seed: int = 0,
    round: int = 0,
    strategy: str | None = None,
    min_pending: int = 16,
    max_pending: int = 1024,
    filtered: bool = True,
    allow: Any = None,
) -> tuple[Selection, SeedingStats]:
    """Exact k-means++ seeding (D² sampling) of ``min(budget, candidates)`` rows over shards.

    ``allow``: an object with ``prefetch(row_ids)`` (called with every batch of proposals),
    ``ok(row_id) -> bool``, ``picked(row_id)`` and ``done()``: a proposal it refuses is
    rejected, which samples D² restricted to the rows it allows at that step (class quotas).
    The first center must be allowed (restrict the shards to the initially allowed rows).

    Labelled rows must already be excluded. Between two syncs at most
    ``clamp(picks so far, min_pending, max_pending)`` new centers are picked;
    ``max_pending=1`` syncs after every pick. ``filtered=False`` makes the shards hold the
    exact D² (float64 GEMMs) instead of its 6-bit grid bound (float32 GEMMs + exact
    fallback); the law of the picks is D² sampling either way. With ``filtered=False,
    max_pending=1`` pick t is the inverse CDF of the D² weights at ``trial_uniforms(t−1)``
    (unless that trial is rejected, probability < 2^−30): the textbook algorithm.

    Returns:
        The selection (``row_id`` values in pick order; scores = the D² weight of each pick
        when it was drawn, ``inf`` for the first) and the run's :class:`SeedingStats`.
    """
    check_space(space)
    if min_pending < 1 or max_pending < 1:
        raise AlscaleError(f"min_pending and max_pending must be >= 1; got {min_pending}, {max_pending}")
    name = strategy or ("badge" if space == "badge" else "kmeanspp")
    rt0 = shards.round_trips
    run = _begin(shards, space, budget, seed, round, filtered, name, allow)
    if run is None:
        return selection([], [], name), SeedingStats(0, 0, 0, shards.round_trips - rt0)
    while len(run.picks) < run.k:
        if allow is not None and allow.done():
            break  # no allowed row is left (quotas full)
        masses = _sync_pending(run)
        if sum(masses) == 0 or run.refused > _MAX_REFUSED:  # no D² mass left (among the allowed rows)
            _fill_rest(run)
            break
        _sample_period(run, masses, min(max(min_pending, len(run.picks)), max_pending, run.k - len(run.picks)))
    stats = SeedingStats(run.syncs, run.trial, run.accepted, shards.round_trips - rt0, exact_rows=run.exact_rows)
    logger.info(
        "%s: %d picks, %d syncs, %d trials (acceptance %.2f), %d round trips, %d exact-kernel rows",
        name, len(run.picks), run.syncs, run.trial, run.accepted / max(run.trial, 1), stats.round_trips,
        run.exact_rows,
    )
    return selection(run.picks, run.scores, name), stats


def _begin(shards: Shards, space: str, budget: int, seed: int, round: int, filtered: bool, name: str,
           allow: Any) -> _Seeding | None:
    """The first center picked (the gate told); None when there is no candidate."""
    begun = start(shards, space, budget, seed, round, filtered)
    if begun is None:
        return None
    run = _Seeding(shards, name, seed, round, begun.k, begun.n_cand, begun.filtered, allow, begun.with_first,
                   begun.empty, FIRST_BOUND * begun.max_n)  # d² <= (|g_i| + |g_c|)² <= 4 max |g|², u <= (1 + 2^-5) d²
    row0 = run.pending.row_ids[0]
    if allow is not None:
        allow.prefetch(np.array([row0], np.int64))
    run.pick(row0, math.inf)
    return run


def _sync_pending(run: _Seeding) -> list[int]:
    """Send the pending centers to the shards (one fan-out); returns the shards' masses."""
    run.e = scale_exponent(run.bound, run.n_cand)
    synced = sync(run.shards, run.pending, run.e, run.filtered)
    run.bound, run.exact_rows = synced.max_u, synced.exact_rows
    run.syncs += 1
    run.synced.extend(run.pending)
    run.pending.clear()
    return synced.masses


def _fill_rest(run: _Seeding) -> None:
    """No D² mass left: the rest of the picks in keyed random order (allowed rows only)."""
    allow = run.allow
    fill = rest(run.shards, run.k - len(run.picks) if allow is None else run.n_cand, run.seed, run.round,
                run.synced.row_ids)
    if allow is not None:
        allow.prefetch(np.asarray(fill, np.int64))
    for r in (int(r) for r in fill):
        if len(run.picks) >= run.k or (allow is not None and allow.done()):
            break
        if allow is not None:
            if r in run.chosen or not allow.ok(r):
                continue
            allow.picked(r)
        run.picks.append(r)
        run.scores.append(0.0)
    logger.info("%s: D² mass is 0 after %d picks; the rest in keyed random order", run.name, run.k - len(fill))


def _sample_period(run: _Seeding, masses: list[int], cap: int) -> None:
    """Draw and accept proposals against the synced weights until ``cap`` centers are pending
    (or the batch of proposals is used up with some pending)."""
    size = _batch_size(cap, run.alpha, run.pending.c or 0, run.pending.d)
    tried = acc = 0
    batch: _Batch | None = None
    while len(run.picks) < run.k and run.pending.m < cap:
        if batch is None or run.trial - batch.first >= len(batch):
            if run.pending.m:
                break  # out of proposals: sync what we have, then draw afresh
            batch = _fetch(run.shards, masses, run.synced, run.seed, run.round, run.trial, size)
            if run.allow is not None:
                run.allow.prefetch(batch.row_ids)
        i = run.trial - batch.first
        run.trial += 1
        tried += 1
        outcome = _try(run, batch, i)
        if outcome == _STOP:
            break
        acc += outcome == _ACCEPT
    run.accepted += acc
    run.alpha = min(1.0, max(0.02, acc / max(tried, 1)))


def _try(run: _Seeding, batch: _Batch, i: int) -> int:
    """Trial ``i`` of ``batch``: accept its proposal with probability ``w / u`` (``w`` the exact
    current D², also to the pending centers) unless already chosen or refused by the gate."""
    row = int(batch.row_ids[i])
    if row in run.chosen:
        return _SKIP
    allow = run.allow
    if allow is not None and not allow.ok(row):
        run.refused += 1
        return _STOP if run.refused > _MAX_REFUSED else _SKIP
    a = None if batch.a is None else batch.a[i:i + 1]
    w = min(float(batch.w[i]), float(run.pending.min_dist(a, batch.h[i:i + 1], batch.n[i:i + 1])[0]))
    if not batch.v[i] * float(batch.q[i]) < math.ldexp(w, run.e):
        return _SKIP
    run.pending.add(row, None if a is None else a[0], batch.h[i], float(batch.n[i]))
    run.refused = 0
    run.pick(row, w)
    return _STOP if allow is not None and allow.done() else _ACCEPT


# ---------------------------------------------------------------------------------------
# Registry entry points: (shards, budget, *, options, seed, round) -> Selection.
# ---------------------------------------------------------------------------------------
def select_kmeanspp(
    shards: Shards, budget: int, *, options: dict[str, Any] | None = None, seed: int = 0, round: int = 0
) -> Selection:
    """Registry entry ``kmeanspp``: exact k-means++ seeding over the embeddings."""
    return seed_exact(shards, budget, space="embedding", seed=seed, round=round, strategy="kmeanspp")[0]


# -- registry spec -----------------------------------------------------------------------
_NEEDS = _spec.Needs(log_probs=False, embeddings=True)
_SUPPORTS = _spec.Supports(keeps=("embeddings",))
SPECS = (
    _spec.StrategySpec(
        "kmeanspp", "loop",
        "k-means++ seeding of the embeddings, exact D² sampling (Arthur & Vassilvitskii, SODA 2007)",
        needs=_NEEDS, supports=_SUPPORTS, aliases=("kmeans++", "k_means++", "k_means_pp"), select=select_kmeanspp),
    _spec.StrategySpec(
        "kmeans_parallel", "loop", "k-means|| seeding of the embeddings (approximate; Bahmani et al., VLDB 2012)",
        options_type=ParallelOptions, needs=_NEEDS, supports=_SUPPORTS, aliases=("kmeans||", "k_means||"),
        select=select_kmeans_parallel),
)

