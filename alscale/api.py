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
    model: Any = None,
    data: Any = None,
    mc_samples: int = 1,
    scoring_batch_size: int = 4096,
    scoring_device: str = "auto",
    columns: dict[str, Any] | None = None,
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
        model, data: a ``torch.nn.Module`` and its inputs (numpy, tensor, ``DataLoader`` in a
            fixed order, or an Arrow table with ``features``) instead of ``log_probs``: the rows
            are scored by the shard workers' Scorer (:mod:`alscale.notebook`) — consistent
            MC dropout with ``mc_samples`` = K masks keyed by ``seed``, the same batching,
            padding and device choice — so the selection equals the job's. ``embeddings``
            is then ``"penultimate"`` (default), a callable ``rows -> [B, E]`` or an array.
        scoring_batch_size, scoring_device: the scorer's ``model.batch_size`` and
            ``model.device`` (``auto``: CUDA when available); not strategy options (BatchBALD's
            own ``device`` option passes through ``**options`` as before).
        columns: pool metadata columns by name, one value per row (numbers, booleans or
            strings): what ``quotas={"by": name, ...}`` groups by and a composed selection
            (strategy ``objective``) filters on or scores by.
        **options: strategy options (e.g. ``beta=2.0, base="bald"`` for ``power``).

    Returns:
        A :class:`~alscale.types.Selection`: ``.indices`` are positions into the inputs in
        pick order, ``.scores`` their ranking keys (higher = picked first).
    """
    info = get_strategy(strategy)
    budget = validation.check_budget(budget)
    outputs: dict[str, np.ndarray] = {}
    if model is not None or data is not None:
        log_probs, embeddings, outputs = _score_model(info, options, model, data, log_probs, embeddings,
                                                   mc_samples=mc_samples, seed=seed, seals=seals,
                                                   batch_size=scoring_batch_size, device=scoring_device)
    opts = dict(options)
    lp, emb = _checked_inputs(info, opts, log_probs, embeddings)
    n = lp.shape[0] if lp is not None else emb.shape[0]
    state = ShardState(np.arange(n, dtype=np.int64), lp, emb, model_outputs=outputs)
    for name, values in (columns or {}).items():
        v = np.asarray(values)
        if v.shape != (n,):
            raise AlscaleError(f"column {name!r} has shape {v.shape}; give one value per row ({n})")
        state.columns[str(name)] = v.astype(object) if v.dtype.kind in "US" else v
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


def _checked_inputs(info: Any, options: dict[str, Any], log_probs: Any, embeddings: Any
                    ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``log_probs`` and ``embeddings`` validated, and what the strategy needs of them present."""
    lp = None if log_probs is None else validation.check_log_probs(log_probs)
    emb = None if embeddings is None else validation.check_embeddings(embeddings, None if lp is None else lp.shape[0])
    if lp is None and emb is None:
        raise AlscaleError("select needs log_probs [N, C] / [N, K, C] or embeddings [N, D]")
    needs = requirements(info, options)
    if needs.needs_log_probs and lp is None:
        raise AlscaleError(f"strategy {info.name} needs log_probs")
    if needs.needs_embeddings and emb is None:
        raise AlscaleError(f"strategy {info.name} needs embeddings [N, D]")
    if lp is not None and lp.shape[1] < needs.min_samples:
        raise AlscaleError(
            f"strategy {info.name} needs K >= {needs.min_samples} samples on the middle axis of log_probs; "
            f"got shape {lp.shape}"
        )
    return lp, emb


def _score_model(name: Any, options: dict[str, Any], model: Any, data: Any, log_probs: Any, embeddings: Any, *,
                 mc_samples: int, seed: int, seals: int | None, batch_size: int, device: str
                 ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """``select(model=, data=)``: the model's log-probs, embeddings and further per-row outputs
    (``{"loss": [N]}`` from a Learning Loss module's third output, as the workers keep them)."""
    if model is None or data is None:
        raise AlscaleError("select with a model needs both model= (a torch.nn.Module) and data= (its inputs)")
    if log_probs is not None:
        raise AlscaleError("select takes log_probs= or model= and data=, not both")
    from alscale.notebook import model_outputs

    needs = requirements(name, dict(options))
    out = model_outputs(model, data, mc_samples=mc_samples, seed=seed, embeddings=embeddings,
                        need_embeddings=needs.needs_embeddings or seals is not None, batch_size=batch_size,
                        device=device)
    outputs = {} if out.loss_N is None else {"loss": out.loss_N}
    return out.log_probs_N_K_C, out.embeddings_N_E, outputs
