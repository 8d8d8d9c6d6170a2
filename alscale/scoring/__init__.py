"""Scoring: turn pool features into log-probabilities and embeddings with a PyTorch model.

A shard worker holds ``features_N_D`` (float32, possibly a read-only zero-copy view of a
memory-mapped Arrow file) and calls ``Scorer(spec, in_features=D, seed=s).score(...)`` to
get ``log_probs_N_K_C`` (float32 natural-log probabilities; K consistent MC-dropout samples,
or K = 1 deterministic pass) and ``embeddings_N_E`` (float32 penultimate-layer activations).

Model protocol (builtins and user factories alike):

* ``forward(x_B_D)`` takes a float32 batch ``[B, D]`` and returns either logits ``[B, C]``
  or a tuple ``(logits [B, C], embedding [B, E])``. C >= 2. The embedding should be the
  input of the last linear layer (what BADGE and k-center use); models that return logits
  only get ``embeddings = None``. Builtins return the tuple.
* Rows must be independent (no batch statistics in eval mode; BatchNorm in eval is fine).
* For ``mc_samples > 1`` the model needs dropout modules: ``nn.Dropout`` becomes
  :class:`ConsistentMCDropout` and ``nn.Dropout1d/2d/3d`` becomes
  :class:`ConsistentMCDropout2d` automatically (or use those classes directly). Functional
  ``F.dropout`` calls are invisible and off in eval mode.
* Optional, for speed with K > 1: methods ``mc_prefix(x_B_D) -> h`` (every layer before
  the first dropout) and ``mc_suffix(h) -> output`` with ``forward(x) ==
  mc_suffix(mc_prefix(x))``; the prefix then runs once per batch instead of K times (a
  dropout layer called inside ``mc_prefix`` raises). Builtins define both.
* A user factory is ``"package.module:callable"``; ``callable(**kwargs)`` returns the
  module. Checkpoints are plain ``state_dict`` files loaded with ``weights_only=True``.

This package imports torch, numpy and the standard library only (no ray, faiss, pyarrow).
"""

from __future__ import annotations

from alscale.scoring.builtins import builtin_models
from alscale.scoring.device import resolve_device
from alscale.scoring.dropout import ConsistentMCDropout, ConsistentMCDropout2d
from alscale.scoring.factory import build_model
from alscale.scoring.scorer import Scorer
from alscale.scoring.spec import ModelSpec

__all__ = [
    "ConsistentMCDropout",
    "ConsistentMCDropout2d",
    "ModelSpec",
    "Scorer",
    "build_model",
    "builtin_models",
    "resolve_device",
]
