"""k-means‖ seeding over shards (Bahmani et al., "Scalable K-Means++", VLDB 2012): approximate by name.

Start from the exact seeding's first center, then ``rounds`` times add every candidate
independently with probability ``min(1, ℓ·u/φ)`` (``ℓ = oversampling · B``; ``u`` the row's
weight, φ their sum: :func:`~alscale.strategies.kmeanspp_shard.kpar_oversample`), weight each
candidate by the number of rows nearest to it (up to the weight grid), and run weighted
k-means++ on the candidates at the coordinator (no Lloyd steps: the picks must be rows).
Shard-count invariant like :func:`~alscale.strategies.kmeanspp.seed_exact`; not the
k-means++ distribution. ``benchmarks/selection_badge.py`` measures its cost against exact.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import spec as _spec
from alscale.strategies.kmeanspp_centers import (
    FIRST_BOUND,
    Centers,
    SeedingStats,
    Start,
    check_space,
    rest,
    selection,
    start,
    sync,
)
from alscale.strategies.kmeanspp_kernels import _S_FINAL, _S_REST, _keyed, min_sq_dist, prepare_centers, scale_exponent
from alscale.strategies.kmeanspp_shard import OP, Factors
from alscale.strategies.shards import Shards
from alscale.types import Selection

logger = logging.getLogger(__name__)


def seed_parallel(
    shards: Shards,
    budget: int,
    *,
    space: str,
    oversampling: float = 0.5,
    rounds: int = 5,
    seed: int = 0,
    round: int = 0,
    strategy: str | None = None,
    filtered: bool = True,
) -> tuple[Selection, SeedingStats]:
    """k-means‖ seeding of ``min(budget, candidates)`` rows (module docstring).

    ``ℓ = oversampling · k`` rows are expected per round; after ``rounds`` rounds (more while
    there are fewer than k candidates) each candidate is weighted by the number of rows it
    was the last to bring closer (the nearest candidate up to the 2^−5 weight grid), and
    the candidates are reduced to k by weighted k-means++ at the coordinator (first pick:
    the BADGE rule, or ∝ weight for plain k-means++).
    """
    check_space(space)
    name = strategy or ("badge_parallel" if space == "badge" else "kmeans_parallel")
    rt0 = shards.round_trips
    begun = start(shards, space, budget, seed, round, filtered)
    if begun is None:
        return selection([], [], name), SeedingStats(0, 0, 0, shards.round_trips - rt0)
    k = begun.k
    cand, counts, r, syncs, exact_rows = _oversample(shards, begun, oversampling, rounds, seed, round)
    picks, scores = _weighted_kpp(cand, counts.astype(np.float64), k, space, seed, round)
    if len(picks) < k:  # every row coincides with a candidate: fill in keyed order
        fill = rest(shards, k - len(picks), seed, round, cand.row_ids)
        picks.extend(int(x) for x in fill)
        scores.extend([0.0] * fill.shape[0])
    stats = SeedingStats(syncs, cand.m, len(picks), shards.round_trips - rt0, rounds=r, exact_rows=exact_rows)
    logger.info(
        "%s: %d candidates from %d rounds -> %d picks, %d round trips", name, cand.m, r, len(picks), stats.round_trips
    )
    return selection(picks, scores, name), stats


def _oversample(shards: Shards, begun: Start, oversampling: float, rounds: int, seed: int, round: int
                ) -> tuple[Centers, np.ndarray, int, int, int]:
    """The oversampling rounds: (candidates, rows each last lowered, rounds, syncs, exact-kernel rows)."""
    batch, cand = begun.with_first, begun.empty
    ell = float(oversampling) * begun.k
    bound = FIRST_BOUND * begun.max_n
    r = syncs = 0
    while True:
        e = scale_exponent(bound, begun.n_cand)
        last = r >= rounds and cand.m + batch.m >= begun.k
        synced = sync(shards, batch, e, begun.filtered, want_counts=True)
        bound = synced.max_u
        syncs += 1
        cand.extend(batch)
        batch.clear()
        mass = sum(synced.masses)
        if last or mass == 0 or r >= rounds + 20:
            assert synced.counts_M is not None
            return cand, synced.counts_M, r, syncs, synced.exact_rows
        parts: list[Factors] = shards.call(OP + "kpar_oversample", ell, mass, int(e), int(seed), int(round), int(r))
        r += 1
        for p in parts:
            for i in range(p.row_ids_R.shape[0]):
                batch.add(int(p.row_ids_R[i]), None if p.a_R_C is None else p.a_R_C[i], p.h_R_D[i], float(p.n_R[i]))


def _weighted_kpp(
    cand: Centers, weight_M: np.ndarray, k: int, space: str, seed: int, round: int
) -> tuple[list[int], list[float]]:
    """Weighted k-means++ over the candidates (coordinator-local, exact kernels)."""
    row_ids, a32, h32, n = cand.arrays()
    m = row_ids.shape[0]
    a64 = None if a32 is None else a32.astype(np.float64)
    h64 = h32.astype(np.float64)
    ca, ch = prepare_centers(a32, h32)
    d_M = np.full(m, np.inf)
    taken = np.zeros(m, dtype=bool)
    u = _keyed(seed, round, _S_FINAL, np.arange(k, dtype=np.int64))
    picks: list[int] = []
    scores: list[float] = []
    j = 0 if space == "badge" else _inverse_cdf(weight_M, u[0])  # candidate 0: the BADGE first center
    while True:
        picks.append(int(row_ids[j]))
        scores.append(float(d_M[j]))
        taken[j] = True
        if len(picks) == min(k, m):
            break
        dj, _ = min_sq_dist(
            a64, h64, n, None if ca is None else ca[j : j + 1], ch[j : j + 1], n[j : j + 1]
        )
        np.minimum(d_M, dj, out=d_M)
        d_M[taken] = 0.0
        p_M = weight_M * d_M
        if not p_M.sum() > 0:
            free = np.flatnonzero(~taken)
            key = _keyed(seed, round, _S_REST, row_ids[free])
            for f in free[np.lexsort((row_ids[free], key))][: k - len(picks)]:
                picks.append(int(row_ids[f]))
                scores.append(0.0)
            break
        j = _inverse_cdf(p_M, u[len(picks)])
    return picks, scores


def _inverse_cdf(p_M: np.ndarray, u: float) -> int:
    cum = np.cumsum(p_M)
    j = int(np.searchsorted(cum, u * cum[-1], side="right"))
    if j >= p_M.shape[0] or p_M[j] <= 0:  # u * total rounded up to the total
        j = int(np.flatnonzero(p_M > 0)[-1])
    return j


def check_parallel_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate k-means‖ options: ``oversampling`` > 0 (ℓ = oversampling · B), ``rounds`` >= 1."""
    over, rounds = options.get("oversampling"), options.get("rounds")
    if isinstance(over, bool) or not isinstance(over, (int, float, np.integer, np.floating)) or not (
        math.isfinite(over) and over > 0
    ):
        raise AlscaleError("option oversampling must be a positive number (ℓ = oversampling * budget); "
                           f"got {short_repr(over)}")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise AlscaleError(f"option rounds must be an integer >= 1; got {short_repr(rounds)}")
    return {**options, "oversampling": float(over), "rounds": int(rounds)}


def select_kmeans_parallel(
    shards: Shards, budget: int, *, options: dict[str, Any] | None = None, seed: int = 0, round: int = 0
) -> Selection:
    """Registry entry ``kmeans_parallel``: k-means‖ over the embeddings."""
    opts = options or {}
    return seed_parallel(
        shards, budget, space="embedding", oversampling=opts.get("oversampling", 0.5),
        rounds=opts.get("rounds", 5), seed=seed, round=round, strategy="kmeans_parallel",
    )[0]


@dataclass(frozen=True)
class ParallelOptions(_spec.StrategyOptions):
    """k-means‖ options: ``oversampling`` (ℓ = oversampling · B) and ``rounds``."""

    oversampling: float = 0.5
    rounds: int = 5

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_parallel_options(options)
