"""Ratio of confidence: the second most likely class's probability over the most likely's.

``score = p̄_(2) / p̄_(1)`` of the predictive distribution ``p̄ = mean_k p_k`` (1 when the
top two tie, near 0 when the model is sure); higher = picked first. Like margin it looks at
the top two classes only, but relative to the winner's confidence: a row at 0.10 / 0.05 is
as uncertain as one at 0.60 / 0.30 (Monarch, "Human-in-the-Loop Machine Learning", Manning
2021, §3.2.3; cf. Settles, "Active Learning Literature Survey", 2009, §3.1).

A per-row score, so the exact sharded top-k, class quotas, SEALS, streaming and the
stochastic transforms (``power`` with ``base: confidence_ratio``) all apply.
"""

from __future__ import annotations

import numpy as np

from alscale.errors import AlscaleError
from alscale.strategies import spec as _spec
from alscale.strategies.scores import predictive_log_probs


def confidence_ratio(log_probs_N_K_C: np.ndarray) -> np.ndarray:
    """``p̄_(2) / p̄_(1)`` per row, float64 ``[N]`` in [0, 1] (log-probs validated as for every score)."""
    lp_N_C = predictive_log_probs(log_probs_N_K_C)
    c = lp_N_C.shape[1]
    if c < 2:
        raise AlscaleError(f"confidence_ratio needs at least 2 classes; log_probs have C = {c}")
    top2_N_2 = np.partition(np.asarray(lp_N_C, dtype=np.float64), c - 2, axis=1)[:, c - 2:]
    return np.exp(top2_N_2[:, 0] - top2_N_2[:, 1])  # the winner's log-prob is finite: no NaN


SPEC = _spec.StrategySpec(
    "confidence_ratio", "score",
    "second over first class probability of the predictive distribution (ratio of confidence; Monarch 2021)",
    needs=_spec.Needs(log_probs=True, min_samples=1),
    supports=_spec.Supports(quotas=True, keeps=("base_score",), stochastic_base=True),
    aliases=("ratio", "ratio_of_confidence"), score=confidence_ratio)
