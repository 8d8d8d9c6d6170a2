"""BADGE (Ash et al., "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower
Bounds", ICLR 2020): k-means++ seeding on gradient embeddings, never materialised.

The gradient of the cross-entropy loss at the model's own prediction ``ŷ = argmax p`` with
respect to the last layer's weights is ``g = (p − e_ŷ) ⊗ h`` (C·D values), where ``h`` is
the penultimate embedding. alscale keeps the two factors — ``a = p − onehot(ŷ)`` (C values,
:func:`gradient_factors`) and ``h`` (D values) — and computes distances in factored form
(:mod:`alscale.strategies.kmeanspp`), so memory is O(N·(C + D)), never O(N·C·D). The sign
convention (the reference code uses ``e_ŷ − p``) does not change any distance.

``p`` is the *predictive* distribution: the mean over the K axis of ``exp(log_probs)``
(K = 1 for a deterministic pass; K MC-dropout samples or committee members otherwise). The
paper uses the deterministic network output; with K > 1 the mean is its Monte-Carlo
estimate. ``ŷ`` ties go to the lower class index.

Strategies: ``badge`` (exact k-means++: first center the largest ``‖g‖``, then D²
sampling) and ``badge_parallel`` (k-means‖, approximate). Labelled rows are not candidates
and not centers, as in the paper.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alscale.strategies import spec as _spec
from alscale.strategies.kmeanspp import ParallelOptions, seed_exact, seed_parallel
from alscale.strategies.kmeanspp_kernels import gradient_factors
from alscale.strategies.shards import Shards
from alscale.types import Selection

__all__ = ["gradient_factors", "select_badge", "select_badge_parallel"]


def select_badge(
    shards: Shards, budget: int, *, options: dict[str, Any] | None = None, seed: int = 0, round: int = 0
) -> Selection:
    """Registry entry ``badge``: exact BADGE over the shards (see :func:`~alscale.strategies.kmeanspp.seed_exact`)."""
    return seed_exact(shards, budget, space="badge", seed=seed, round=round, strategy="badge")[0]


def select_badge_parallel(
    shards: Shards, budget: int, *, options: dict[str, Any] | None = None, seed: int = 0, round: int = 0
) -> Selection:
    """Registry entry ``badge_parallel``: BADGE with k-means‖ seeding (Bahmani et al., VLDB 2012)."""
    opts = options or {}
    return seed_parallel(
        shards, budget, space="badge", oversampling=opts.get("oversampling", 0.5),
        rounds=opts.get("rounds", 5), seed=seed, round=round, strategy="badge_parallel",
    )[0]


# -- registry spec -----------------------------------------------------------------------
def select_with_quotas(shards: Shards, budget: int, lo: np.ndarray, hi: np.ndarray, *, options: Any = None,
                       seed: int = 0, round: int = 0, avail: np.ndarray | None = None
                       ) -> tuple[Selection, np.ndarray]:
    """BADGE's D² sampling restricted, at each step, to the rows its class quotas allow (by
    rejection; :mod:`alscale.strategies.quotas`)."""
    from alscale.strategies import quotas

    need = lo.copy()
    allowed0 = (hi > 0) & ((need > 0) if budget <= int(need.sum()) else True)
    quotas.restrict_classes(shards, ~allowed0)  # the first center is allowed
    gate = quotas.QuotaGate(shards, lo, hi, budget, avail)
    sel, _ = seed_exact(shards, budget, space="badge", seed=seed, round=round, strategy="badge", allow=gate)
    return sel, gate.counts


_NEEDS = _spec.Needs(log_probs=True, embeddings=True)
_SUPPORTS = _spec.Supports(keeps=("log_probs", "embeddings"))
SPECS = (
    _spec.StrategySpec(
        "badge", "loop",
        "k-means++ seeding on gradient embeddings (p - onehot(argmax p)) x h, "
        "exact D² sampling (Ash et al., ICLR 2020)",
        needs=_NEEDS, supports=_spec.Supports(quotas=True, keeps=("log_probs", "embeddings")), select=select_badge,
        quota_select=select_with_quotas),
    _spec.StrategySpec(
        "badge_parallel", "loop",
        "BADGE seeded by k-means|| (approximate; Ash et al., ICLR 2020; Bahmani et al., VLDB 2012)",
        options_type=ParallelOptions, needs=_NEEDS, supports=_SUPPORTS, aliases=("badge||",),
        select=select_badge_parallel),
)

