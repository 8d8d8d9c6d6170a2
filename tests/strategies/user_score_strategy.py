"""A user's per-row score strategy, outside alscale (imported by path in the objective tests)."""

from __future__ import annotations

import numpy as np

from alscale.strategies.spec import Needs, StrategySpec


def second_choice(log_probs_N_K_C: np.ndarray) -> np.ndarray:
    """The mean probability of each row's second most likely class (high near a boundary)."""
    p = np.exp(np.asarray(log_probs_N_K_C, np.float64)).mean(axis=1)
    return np.sort(p, axis=1)[:, -2]


SPEC = StrategySpec("second_choice", "score", "probability of the runner-up class (a user's score)",
                    needs=Needs(log_probs=True), score=second_choice)
