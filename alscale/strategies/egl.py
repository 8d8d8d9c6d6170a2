"""Expected gradient length (Settles, Craven & Ray, NIPS 2008), last layer in closed form.

For a softmax last layer ``z = W h + b`` and cross-entropy, the gradient for label ``y`` is
``∂/∂W = (p − e_y) hᵀ`` and ``∂/∂b = p − e_y``, so its norm is
``‖p − e_y‖ · sqrt(‖h‖² + 1)`` with ``‖p − e_y‖² = Σ_c p_c² − 2 p_y + 1``. The expected
length under the model's own predictive ``p`` is

    EGL(x) = sqrt(‖h‖² + [bias]) · Σ_y p_y sqrt(Σ_c p_c² − 2 p_y + 1)

— no per-label backward pass. ``p`` is the mean over the K samples of the log-probs, ``h``
the embedding (the last layer's input). Rows are ranked by EGL through the exact sharded
top-k (ties to the lower ``row_id``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import spec as _spec
from alscale.strategies.shards import Shards, ShardState, shard_op
from alscale.types import Selection

_OP = "alscale.strategies.egl."
_ROWS = 65536


def egl_scores(log_probs_N_K_C: np.ndarray, embeddings_N_E: np.ndarray, *, bias: bool = True) -> np.ndarray:
    """EGL of each row (float64 ``[N]``; see the module docstring)."""
    n = log_probs_N_K_C.shape[0]
    out = np.empty(n, dtype=np.float64)
    for r0 in range(0, n, _ROWS):
        p = np.exp(np.asarray(log_probs_N_K_C[r0:r0 + _ROWS], dtype=np.float64)).mean(axis=1)  # [B, C]
        sq = (p * p).sum(axis=1, keepdims=True)
        per_label = np.sqrt(np.maximum(sq - 2.0 * p + 1.0, 0.0))  # ‖p − e_y‖ for every y
        h = np.asarray(embeddings_N_E[r0:r0 + _ROWS], dtype=np.float64)
        out[r0:r0 + _ROWS] = (p * per_label).sum(axis=1) * np.sqrt((h * h).sum(axis=1) + (1.0 if bias else 0.0))
    return out


@shard_op
def egl_prepare(state: ShardState, bias: bool) -> None:
    """Set this shard's ranking key to EGL (then ``topk`` merges as for any score)."""
    if state.log_probs_N_K_C is None or state.embeddings_N_D is None:
        raise ValueError("EGL needs log-probs and embeddings, but this shard lacks one of them")
    state.use_scores(egl_scores(state.log_probs_N_K_C, state.embeddings_N_D, bias=bias))


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(options["bias"], bool):
        raise AlscaleError(f"option bias of strategy egl must be true or false; got {short_repr(options['bias'])}")
    return options


def select_egl(shards: Shards, budget: int, *, options: dict[str, Any], seed: int = 0, round: int = 0) -> Selection:
    """Registry entry ``egl``: the ``budget`` unlabelled rows of largest EGL."""
    shards.call(_OP + "egl_prepare", bool(options["bias"]))
    scores, ids = shards.topk(budget)
    return Selection(np.asarray(ids, np.int64), np.asarray(scores, np.float64), "egl")


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class EGLOptions(_spec.StrategyOptions):
    """``bias``: include the last layer's bias gradient."""

    bias: bool = True

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


SPEC = _spec.StrategySpec(
    "egl", "loop", "expected gradient length of the last layer, closed form (Settles et al., NIPS 2008)",
    options_type=EGLOptions, needs=_spec.Needs(log_probs=True, embeddings=True),
    supports=_spec.Supports(keeps=("log_probs", "embeddings")), select=select_egl)

