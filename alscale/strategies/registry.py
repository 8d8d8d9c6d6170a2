"""Strategy registry: name -> :class:`StrategyInfo` (what it computes, what it needs, its options).

Four kinds of strategy live here:

- ``"score"``: deterministic top-B of a per-row score (``score_fn``, from
  :mod:`alscale.strategies.scores`; higher = picked first).
- ``"stochastic"``: Gumbel-top-B of a transform of a *base* score strategy (Kirsch et al.,
  "Stochastic Batch Acquisition", TMLR 2023): ``power`` (p ∝ s^beta), ``softmax``
  (p ∝ exp(beta s)), ``softrank`` (p ∝ rank^-beta). Options ``beta`` (> 0, default 1) and
  ``base`` (a registered score strategy, default ``entropy``). Their ``min_samples`` and
  ``needs_log_probs`` are those of the *default* base; a caller must resolve the real
  requirements through the chosen base: ``get_strategy(check_options(name, opts)["base"])``
  (or :func:`score_strategy`).
- ``"random"``: uniform sampling (keyed noise; needs no model output).
- ``"loop"``: a selection loop of its own over the ``Shards`` seam (k-center, BADGE,
  BatchBALD ...), named by ``select_fn`` (``"module:function"``, imported on first use, so
  this module stays light). Its options are checked by its ``check_fn`` when it has one.

Names are matched case-insensitively, with ``-`` and spaces read as ``_``; aliases map to a
canonical name. There is deliberately no ``powerbald`` entry: the paper's PowerBALD is
``power`` with ``base: bald``, and an entry would only duplicate ``power`` with another
default (callers dispatch the stochastic transform on the canonical name).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import scores

__all__ = [
    "Requirements",
    "StrategyInfo",
    "check_options",
    "get_strategy",
    "requirements",
    "resolve",
    "score_strategy",
    "strategy_names",
]


@dataclass(frozen=True)
class StrategyInfo:
    """What a registered strategy is and needs.

    Attributes:
        name: canonical name.
        kind: ``"score"`` (deterministic top-k of a score), ``"stochastic"`` (Gumbel-top-k
            of a transform of a base score) or ``"random"``.
        score_fn: ``log_probs_N_K_C -> scores_N`` (float64, higher = picked first) for kind
            ``"score"``; None otherwise.
        min_samples: the least K the score needs (2 for the disagreement scores). For
            ``"stochastic"`` it is the default base's; resolve through the chosen base.
        needs_log_probs: whether the strategy needs model log-probs (same caveat).
        options: allowed options with their defaults (read-only).
        summary: one line, citing the paper.
        select_fn: for kind ``"loop"``, ``"module:function"`` with the signature
            ``(shards, budget, *, options, seed, round) -> Selection``.
        needs_embeddings: whether the shards must hold embeddings.
        check_fn: optional ``"module:function"`` ``(options: dict) -> dict`` run by
            :func:`check_options` after the generic checks (range checks of its own).
    """

    name: str
    kind: str
    score_fn: Callable[[np.ndarray], np.ndarray] | None
    min_samples: int
    needs_log_probs: bool
    options: Mapping[str, Any]
    summary: str
    select_fn: str | None = None
    needs_embeddings: bool = False
    check_fn: str | None = None


def resolve(path: str) -> Any:
    """Import ``"package.module:attribute"``."""
    import importlib

    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


_NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})
_STOCHASTIC_OPTIONS: Mapping[str, Any] = MappingProxyType({"beta": 1.0, "base": "entropy"})


def _score(name: str, fn: Callable[[np.ndarray], np.ndarray], min_samples: int, summary: str) -> StrategyInfo:
    return StrategyInfo(name, "score", fn, min_samples, True, _NO_OPTIONS, summary)


def _stochastic(name: str, summary: str) -> StrategyInfo:
    # min_samples / needs_log_probs: those of the default base, entropy (K >= 1, log-probs).
    return StrategyInfo(name, "stochastic", None, 1, True, _STOCHASTIC_OPTIONS, summary)


_STRATEGIES: dict[str, StrategyInfo] = {
    s.name: s
    for s in (
        StrategyInfo(
            "random", "random", None, 1, False, _NO_OPTIONS, "uniform random sample of the unlabelled rows (baseline)"
        ),
        _score("least_confidence", scores.least_confidence, 1, "1 - max_c p(c|x) (Lewis & Gale, SIGIR 1994)"),
        _score("margin", scores.margin, 1, "1 - (p_top1 - p_top2) (Scheffer et al., IDA 2001)"),
        _score("entropy", scores.entropy, 1, "predictive entropy H[p(y|x)] (Shannon 1948; Gal et al., ICML 2017)"),
        _score(
            "bald", scores.bald, 2, "mutual information of label and weights (Houlsby et al. 2011; Gal et al. 2017)"
        ),
        _score(
            "variation_ratios",
            scores.variation_ratios,
            2,
            "1 - modal-class vote share over K samples (Freeman 1965; Gal et al., ICML 2017)",
        ),
        _score(
            "mean_std",
            scores.mean_std,
            2,
            "mean over classes of the std of p(c|x,w) over K samples (Kampffmeyer et al., CVPR-W 2016)",
        ),
        _score(
            "vote_entropy",
            scores.vote_entropy,
            2,
            "entropy of the committee's argmax votes (QBC; Dagan & Engelson, ICML 1995)",
        ),
        _score(
            "consensus_kl",
            scores.consensus_kl,
            2,
            "mean KL of each member to the consensus (QBC; McCallum & Nigam, ICML 1998)",
        ),
        _stochastic("power", "Gumbel-top-k with p ∝ score^beta, e.g. PowerBALD (Kirsch et al., TMLR 2023)"),
        _stochastic("softmax", "Gumbel-top-k with p ∝ exp(beta * score) (Kirsch et al., TMLR 2023)"),
        _stochastic("softrank", "Gumbel-top-k with p ∝ rank^-beta over the whole pool (Kirsch et al., TMLR 2023)"),
        # BatchBALD (issue 4): options documented in alscale.strategies.batchbald.check_options.
        StrategyInfo(
            "batchbald",
            "loop",
            None,
            2,
            True,
            MappingProxyType(
                {"num_samples": 1000, "max_configs": None, "device": "auto", "chunk_rows": None, "prune": True}
            ),
            "greedy joint mutual information of the batch's labels and the weights (Kirsch et al., NeurIPS 2019)",
            select_fn="alscale.strategies.batchbald:select_batchbald",
            check_fn="alscale.strategies.batchbald:check_options",
        ),
        StrategyInfo(
            "batchbald_prefilter",
            "loop",
            None,
            2,
            True,
            MappingProxyType(
                {
                    "num_samples": 1000,
                    "max_configs": None,
                    "device": "auto",
                    "chunk_rows": None,
                    "prune": True,
                    "prefilter": None,
                }
            ),
            "BatchBALD on the top-`prefilter` rows by BALD (approximate; Kirsch et al., NeurIPS 2019)",
            select_fn="alscale.strategies.batchbald:select_batchbald_prefilter",
            check_fn="alscale.strategies.batchbald:check_options",
        ),
        # k-center greedy (issue 3): alscale.strategies.kcenter (options checked by its check_options).
        StrategyInfo(
            "kcenter",
            "loop",
            None,
            1,
            False,
            MappingProxyType({"backend": "auto", "mode": "auto", "gather_bytes": 2 << 30, "offer_rows": None}),
            "exact k-center greedy / Core-Set (Sener & Savarese, ICLR 2018; Gonzalez 1985)",
            select_fn="alscale.strategies.kcenter:select_kcenter",
            needs_embeddings=True,
            check_fn="alscale.strategies.kcenter:check_options",
        ),
        StrategyInfo(
            "kcenter_approx",
            "loop",
            None,
            1,
            False,
            MappingProxyType({"backend": "auto"}),
            "k-center greedy per shard, then on the union (approximate; Malkomes et al., NeurIPS 2015)",
            select_fn="alscale.strategies.kcenter:select_kcenter_approx",
            needs_embeddings=True,
            check_fn="alscale.strategies.kcenter:check_options",
        ),
        # BADGE / k-means++ (issue 3): alscale.strategies.badge and .kmeanspp.
        StrategyInfo(
            "badge",
            "loop",
            None,
            1,
            True,
            _NO_OPTIONS,
            "k-means++ seeding on gradient embeddings (p - onehot(argmax p)) x h, exact D² sampling "
            "(Ash et al., ICLR 2020)",
            select_fn="alscale.strategies.badge:select_badge",
            needs_embeddings=True,
        ),
        StrategyInfo(
            "badge_parallel",
            "loop",
            None,
            1,
            True,
            MappingProxyType({"oversampling": 0.5, "rounds": 5}),
            "BADGE seeded by k-means|| (approximate; Ash et al., ICLR 2020; Bahmani et al., VLDB 2012)",
            select_fn="alscale.strategies.badge:select_badge_parallel",
            needs_embeddings=True,
            check_fn="alscale.strategies.kmeanspp:check_parallel_options",
        ),
        StrategyInfo(
            "kmeanspp",
            "loop",
            None,
            1,
            False,
            _NO_OPTIONS,
            "k-means++ seeding of the embeddings, exact D² sampling (Arthur & Vassilvitskii, SODA 2007)",
            select_fn="alscale.strategies.kmeanspp:select_kmeanspp",
            needs_embeddings=True,
        ),
        StrategyInfo(
            "kmeans_parallel",
            "loop",
            None,
            1,
            False,
            MappingProxyType({"oversampling": 0.5, "rounds": 5}),
            "k-means|| seeding of the embeddings (approximate; Bahmani et al., VLDB 2012)",
            select_fn="alscale.strategies.kmeanspp:select_kmeans_parallel",
            needs_embeddings=True,
            check_fn="alscale.strategies.kmeanspp:check_parallel_options",
        ),
        # Cold start and huge batches (issue 9).
        StrategyInfo(
            "typiclust",
            "loop",
            None,
            1,
            False,
            MappingProxyType({"max_clusters": 500, "knn": 20, "min_cluster_size": 5, "kmeans_iters": 100}),
            "most typical row of each uncovered k-means cluster (Hacohen et al., ICML 2022)",
            select_fn="alscale.strategies.typiclust:select_typiclust",
            needs_embeddings=True,
            check_fn="alscale.strategies.typiclust:check_options",
        ),
        StrategyInfo(
            "probcover",
            "loop",
            None,
            1,
            False,
            MappingProxyType({"delta": "auto", "purity": 0.95, "n_classes": 10, "normalize": True,
                              "chunk_rows": 8192, "max_edges": 200_000_000, "kmeans_iters": 100}),
            "greedy max coverage of δ-balls, δ by the purity rule (Yehuda et al., NeurIPS 2022)",
            select_fn="alscale.strategies.probcover:select_probcover",
            needs_embeddings=True,
            check_fn="alscale.strategies.probcover:check_options",
        ),
        StrategyInfo(
            "cluster_margin",
            "loop",
            None,
            1,
            True,
            MappingProxyType({"n_clusters": 100, "margin_ratio": 10.0, "kmeans_iters": 20}),
            "lowest-margin rows round-robin over k-means clusters, smallest first (Citovsky et al., NeurIPS 2021)",
            select_fn="alscale.strategies.cluster_margin:select_cluster_margin",
            needs_embeddings=True,
            check_fn="alscale.strategies.cluster_margin:check_options",
        ),
        StrategyInfo(
            "alfamix",
            "loop",
            None,
            1,
            True,
            MappingProxyType({"eps": 0.2, "head": None, "labels": None}),
            "feature mixing toward labelled class anchors, then k-means over the changed rows "
            "(Parvaneh et al., CVPR 2022)",
            select_fn="alscale.strategies.alfamix:select_alfamix",
            needs_embeddings=True,
            check_fn="alscale.strategies.alfamix:check_options",
        ),
        StrategyInfo(
            "learning_loss",
            "loop",
            None,
            1,
            True,
            _NO_OPTIONS,
            "largest loss predicted by the model's loss-prediction module (Yoo & Kweon, CVPR 2019)",
            select_fn="alscale.strategies.learning_loss:select_learning_loss",
        ),
        StrategyInfo(
            "egl",
            "loop",
            None,
            1,
            True,
            MappingProxyType({"bias": True}),
            "expected gradient length of the last layer, closed form (Settles et al., NIPS 2008)",
            select_fn="alscale.strategies.egl:select_egl",
            needs_embeddings=True,
            check_fn="alscale.strategies.egl:check_options",
        ),
    )
}

_ALIASES: dict[str, str] = {
    "lc": "least_confidence",
    "least_confident": "least_confidence",
    "max_entropy": "entropy",
    "varratios": "variation_ratios",
    "var_ratios": "variation_ratios",
    "qbc": "vote_entropy",
    "vote": "vote_entropy",
    "kl": "consensus_kl",
    "uniform": "random",
    "kmeans++": "kmeanspp",
    "k_means++": "kmeanspp",
    "k_means_pp": "kmeanspp",
    "kmeans||": "kmeans_parallel",
    "k_means||": "kmeans_parallel",
    "badge||": "badge_parallel",
    "coreset": "kcenter",
    "core_set": "kcenter",
    "k_center": "kcenter",
    "k_center_greedy": "kcenter",
}


def _canonical(name: str) -> str | None:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    return key if key in _STRATEGIES else None


def strategy_names() -> list[str]:
    """The canonical strategy names, sorted (aliases not included)."""
    return sorted(_STRATEGIES)


def get_strategy(name: str) -> StrategyInfo:
    """Look a strategy up by name or alias (case-insensitive).

    Raises:
        AlscaleError: ``unknown strategy 'foo'; valid: bald, consensus_kl, ...``.
    """
    if not isinstance(name, str):
        raise AlscaleError(f"strategy name must be a string; got {short_repr(name)}")
    canonical = _canonical(name)
    if canonical is None:
        raise AlscaleError(f"unknown strategy {short_repr(name)}; valid: {', '.join(strategy_names())}")
    return _STRATEGIES[canonical]


def check_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a strategy's options and fill in the defaults; returns the full option dict.

    ``beta`` must be a positive finite number (returned as float); ``base`` must name a
    registered ``"score"`` strategy (aliases allowed; returned canonical). Unknown keys are
    errors that list the allowed keys.
    """
    info = get_strategy(name)
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise AlscaleError(f"options of strategy {info.name} must be a mapping; got {type(options).__name__}")
    unknown = sorted(str(k) for k in options if k not in info.options)
    if unknown:
        allowed = ", ".join(sorted(info.options)) if info.options else "none"
        raise AlscaleError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(short_repr(k, 40) for k in unknown[:8])}"
            f"{', ...' if len(unknown) > 8 else ''} "
            f"for strategy {info.name}; allowed: {allowed}"
        )
    merged = {**info.options, **options}
    if "beta" in merged:
        beta = merged["beta"]
        if (
            isinstance(beta, bool)
            or not isinstance(beta, (int, float, np.integer, np.floating))
            or not math.isfinite(beta)
            or beta <= 0
        ):
            raise AlscaleError(f"option beta of strategy {info.name} must be a positive number; "
                               f"got {short_repr(beta)}")
        merged["beta"] = float(beta)
    if "base" in merged:
        merged["base"] = _check_base(info.name, merged["base"])
    if info.check_fn is not None:
        merged = resolve(info.check_fn)(merged)
    return merged


def _check_base(strategy: str, base: object) -> str:
    score_names = sorted(n for n, s in _STRATEGIES.items() if s.kind == "score")
    canonical = _canonical(base) if isinstance(base, str) else None
    if canonical is None or _STRATEGIES[canonical].kind != "score":
        raise AlscaleError(
            f"option base of strategy {strategy} must be a score strategy; got {short_repr(base)}; "
            f"valid: {', '.join(score_names)}"
        )
    return canonical


@dataclass(frozen=True)
class Requirements:
    """What a strategy with given options needs from the pool or the model."""

    needs_log_probs: bool
    min_samples: int
    needs_embeddings: bool


def requirements(name: str, options: Mapping[str, Any] | None = None) -> Requirements:
    """Resolve a strategy's needs (through the base score for a stochastic strategy)."""
    info = get_strategy(name)
    base = score_strategy(info.name, options) if info.kind == "stochastic" else info
    return Requirements(base.needs_log_probs, base.min_samples, info.needs_embeddings)


def score_strategy(name: str, options: Mapping[str, Any] | None = None) -> StrategyInfo | None:
    """The ``"score"`` strategy whose ``score_fn`` / ``min_samples`` / ``needs_log_probs`` apply.

    Itself for a score strategy, the (validated) base for a stochastic one, None for random.
    """
    info = get_strategy(name)
    if info.kind == "score":
        return info
    if info.kind == "stochastic":
        return _STRATEGIES[check_options(info.name, options)["base"]]
    return None
