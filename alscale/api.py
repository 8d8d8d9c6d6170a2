"""In-memory API for small data and notebooks: the same loops as a job, over numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from alscale import validation
from alscale.errors import AlscaleError
from alscale.strategies import FanoutShards, InProcessFanout, ShardState, get_strategy, requirements, run_strategy
from alscale.types import Selection


def select(
    strategy: Any,
    *,
    budget: int,
    log_probs: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    labeled: np.ndarray | None = None,
    seed: int = 0,
    round: int = 0,
    seals: int | None = None,
    quotas: dict[str, Any] | None = None,
    **options: Any,
) -> Selection:
    """Select ``min(budget, unlabelled)`` rows with a registered strategy.

    Args:
        strategy: a registry name (``alscale.strategies.strategy_names()``), an import path
            ``"pkg.mod:MyStrategy"``, or a :class:`~alscale.strategies.spec.StrategySpec`
            (or an object with one as ``.spec``; registered on first use).
        budget: number of rows to pick (> 0).
        log_probs: natural-log probabilities ``[N, C]`` or ``[N, K, C]`` (K MC samples or
            committee members).
        embeddings: ``[N, D]`` (for the diversity strategies).
        labeled: positions already labelled (never picked), or a boolean mask ``[N]``.
        seed, round: the randomness key; the same arguments give the same selection.
        seals: SEALS candidate filter (Coleman et al. 2022): only the ``seals`` nearest
            unlabelled rows of each labelled row are candidates (needs ``embeddings``).
        quotas: class quotas ``{"min": n or {class: n}, "max": ...}`` by predicted class
            (score-based strategies; :mod:`alscale.strategies.quotas`).
        **options: strategy options (e.g. ``beta=2.0, base="bald"`` for ``power``).

    Returns:
        A :class:`~alscale.types.Selection`: ``.indices`` are positions into the inputs in
        pick order, ``.scores`` their ranking keys (higher = picked first).
    """
    info = get_strategy(strategy)
    budget = validation.check_budget(budget)
    lp = None if log_probs is None else validation.check_log_probs(log_probs)
    emb = None if embeddings is None else validation.check_embeddings(embeddings, None if lp is None else lp.shape[0])
    if lp is None and emb is None:
        raise AlscaleError("select needs log_probs [N, C] / [N, K, C] or embeddings [N, D]")
    n = lp.shape[0] if lp is not None else emb.shape[0]
    opts = dict(options)
    needs = requirements(info, opts)
    if needs.needs_log_probs and lp is None:
        raise AlscaleError(f"strategy {info.name} needs log_probs")
    if needs.needs_embeddings and emb is None:
        raise AlscaleError(f"strategy {info.name} needs embeddings [N, D]")
    if lp is not None and lp.shape[1] < needs.min_samples:
        raise AlscaleError(
            f"strategy {info.name} needs K >= {needs.min_samples} samples on the middle axis of log_probs; "
            f"got shape {lp.shape}"
        )
    state = ShardState(np.arange(n, dtype=np.int64), lp, emb)
    shards = FanoutShards(InProcessFanout([state]))
    shards.exclude(validation.check_labeled_positions(labeled, n))
    if seals is not None:
        if emb is None:
            raise AlscaleError("the SEALS candidate filter (seals=k) needs embeddings [N, D]")
        from alscale.strategies.seals import apply_seals

        apply_seals(shards, seals)
    if quotas is not None:
        from alscale.strategies.quotas import select_with_quotas

        return select_with_quotas(shards, info, budget, quotas, options=opts, seed=seed, round=round).selection
    return run_strategy(shards, info, budget, options=opts, seed=seed, round=round)
