"""A user strategy in its own file: density-weighted margin ("information density").

Settles & Craven, "An Analysis of Active Learning Strategies for Sequence Labeling Tasks",
EMNLP 2008: weight an uncertainty score by how representative a row is, its mean cosine
similarity to the pool,

    score_i = (1 - margin_i) * ((1 + mean_j cos(x_i, x_j)) / 2) ** beta,

so that outliers are picked less often. The mean cosine factors through one global sum,
``mean_j cos(x_i, x_j) = x̂_i · (Σ_j x̂_j) / N``, so the loop needs one fan-out for the sum
and one for the scores, and then alscale's exact sharded top-k. The sum is exact
(:func:`alscale.index.exact.exact_column_sums`, combined across shards without rounding),
so the scores are the same float64 values however the pool is sharded.

Use it in a job (the module must be importable: installed, on ``PYTHONPATH``, or next to
where you run; the Ray executor and ``alscale submit`` ship it to the workers)::

    strategy: {name: "density_margin:DensityMargin", budget: 100, options: {beta: 1.0}}

or in Python: ``alscale.select(DensityMargin, budget=100, log_probs=..., embeddings=...)``,
and check it with ``alscale.testing.check_strategy(DensityMargin)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from alscale import Needs, StrategyOptions, StrategySpec, Supports
from alscale.errors import AlscaleError
from alscale.index.exact import combine_exact_sums, exact_column_sums
from alscale.strategies import Shards, ShardState, shard_op
from alscale.strategies.scores import margin
from alscale.types import Selection

_OP = f"{__name__}."  # shard ops are named "<module>.<function>"; workers import the module by it


@dataclass(frozen=True)
class DensityMarginOptions(StrategyOptions):
    """``beta`` (>= 0): how strongly density weighs; 0 is plain margin."""

    beta: float = 1.0

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        beta = options["beta"]
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise AlscaleError(f"option beta of strategy density_margin must be a number >= 0; got {beta!r}")
        return {**options, "beta": float(beta)}


def _unit_rows(x_N_D: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32; a zero row stays zero) — a function of each row only."""
    x = np.asarray(x_N_D, dtype=np.float32)
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1))
    return (x / np.where(norm > 0, norm, 1.0)[:, None]).astype(np.float32)


class Sums(NamedTuple):
    """One shard's exact column sums of the unit embeddings, and its row count."""

    sums_D: Any
    n_rows: int


@shard_op(mutates=False)
def dm_sums(state: ShardState) -> Sums:
    """This shard's :class:`Sums` (a typed result: the loop reads it by field)."""
    if state.embeddings_N_D is None:
        raise AlscaleError("strategy density_margin needs embeddings, but this shard has none")
    return Sums(exact_column_sums(_unit_rows(state.embeddings_N_D)), state.n_rows())


@shard_op  # changes the shard's state (its ranking key): mutates=True, the default
def dm_rank(state: ShardState, mean_D: np.ndarray, beta: float) -> None:
    """Rank this shard's rows by the density-weighted margin (then ``Shards.topk`` picks)."""
    unit = _unit_rows(state.embeddings_N_D).astype(np.float64)
    density = np.clip((1.0 + (unit * mean_D).sum(axis=1)) / 2.0, 0.0, 1.0)  # row by row: shard-invariant
    state.use_scores(margin(state.log_probs_N_K_C) * density ** beta)


def select_density_margin(shards: Shards, budget: int, *, options: dict[str, Any], seed: int = 0,
                          round: int = 0) -> Selection:
    """The ``budget`` unlabelled rows of highest density-weighted margin (ties: lower row_id)."""
    parts: list[Sums] = shards.call(_OP + "dm_sums")
    n_rows = sum(p.n_rows for p in parts)
    mean_D = combine_exact_sums([p.sums_D for p in parts]) / max(n_rows, 1)
    shards.call(_OP + "dm_rank", mean_D, options["beta"])
    scores_B, ids_B = shards.topk(budget)
    return Selection(np.asarray(ids_B, np.int64), np.asarray(scores_B, np.float64), "density_margin")


DensityMargin = StrategySpec(
    name="density_margin",
    kind="loop",
    summary="margin weighted by mean cosine similarity to the pool (information density; Settles & Craven, "
            "EMNLP 2008)",
    options_type=DensityMarginOptions,
    needs=Needs(log_probs=True, embeddings=True),
    supports=Supports(keeps=("log_probs", "embeddings")),
    select=select_density_margin,
)
