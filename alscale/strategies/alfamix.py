"""ALFA-Mix (Parvaneh et al., "Active Learning by Feature Mixing", CVPR 2022).

For an unlabelled row with embedding ``z`` and the classifier's last linear layer
``logits = W z + b`` predicting ``ŷ``, and for every class ``y`` with labelled rows, the
*anchor* ``z*_y`` is the mean embedding of the labelled rows of class ``y``. The row is
mixed toward each anchor, ``z̃ = α ⊙ z*_y + (1 − α) ⊙ z``, with the paper's closed-form
interpolation (its eq. 5; the reference code's ``calculate_optimum_alpha``)

    α = ε · (‖z*_y − z‖ / ‖∇_z ℓ‖) · ∇_z ℓ / (z*_y − z),   clipped to [0, ε] elementwise,

where ``∇_z ℓ = Wᵀ(softmax(W z + b) − e_ŷ)`` is the gradient of the cross-entropy at the
row's own prediction. A row is a *candidate* when the head's prediction of any mixture
differs from ``ŷ``. The candidates are clustered into B clusters by k-means (on
L2-normalised embeddings, as the reference code) and the candidate nearest each centroid is
picked; with fewer than B candidates, all are picked and the rest of the budget is uniformly
random (keyed by ``(seed, round, row_id)``).

Inputs beyond the shards: the head ``(W [C, E], b [C])`` and the labels of the labelled rows
(options ``head`` and ``labels``; a job fills them from its model's ``head`` layer and its
labelled set's ``label`` column / ledger). Candidates are flagged on the shards; their
embeddings (at most the candidate set) are gathered for the k-means, which runs in one
process on the rows in ``row_id`` order, so the picks are the same for any sharding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import noise, progress
from alscale.strategies import spec as _spec
from alscale.strategies.shards import FanoutShards, InProcessFanout, Shards, ShardState, shard_op
from alscale.types import Selection

logger = logging.getLogger(__name__)

_OP = "alscale.strategies.alfamix."
_ROWS = 16384


def mix_flags(z_N_E: np.ndarray, anchors_Y_E: np.ndarray, w_C_E: np.ndarray, b_C: np.ndarray, eps: float
              ) -> np.ndarray:
    """True for rows whose prediction changes under a closed-form mix toward some anchor."""
    z = np.asarray(z_N_E, dtype=np.float64)
    w = np.asarray(w_C_E, dtype=np.float64)
    b = np.asarray(b_C, dtype=np.float64)
    logits = z @ w.T + b
    pred = logits.argmax(axis=1)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(z.shape[0]), pred] -= 1.0
    grad = p @ w  # [N, E]
    gnorm = np.linalg.norm(grad, axis=1, keepdims=True)
    flags = np.zeros(z.shape[0], dtype=bool)
    for anchor in np.asarray(anchors_Y_E, dtype=np.float64):
        d = anchor[None, :] - z
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = eps * np.linalg.norm(d, axis=1, keepdims=True) / gnorm * grad / (d + 1e-8)
        alpha = np.clip(np.nan_to_num(alpha, nan=0.0, posinf=eps, neginf=0.0), 0.0, eps)
        mixed = alpha * anchor[None, :] + (1.0 - alpha) * z
        flags |= (mixed @ w.T + b).argmax(axis=1) != pred
    return flags


class MixCandidates(NamedTuple):
    """A shard's candidate rows (their prediction changes under some mixture): ids, embeddings."""

    row_ids_C: np.ndarray
    embeddings_C_D: np.ndarray


class Draws(NamedTuple):
    """A shard's best rows by keyed uniform noise (the random fill): noise and ids."""

    u_K: np.ndarray
    row_ids_K: np.ndarray


@shard_op(mutates=False)
def alfa_candidates(state: ShardState, anchors_Y_E: np.ndarray, w_C_E: np.ndarray, b_C: np.ndarray,
                    eps: float) -> MixCandidates:
    """This shard's candidate rows (module docstring)."""
    if state.embeddings_N_D is None:
        raise AlscaleError("strategy alfamix needs embeddings, but this shard has none")
    cand = np.flatnonzero(state.candidates_N)
    keep = []
    for r0 in range(0, cand.shape[0], _ROWS):
        rows = cand[r0:r0 + _ROWS]
        keep.append(rows[mix_flags(state.embeddings_N_D[rows], anchors_Y_E, w_C_E, b_C, eps)])
    pos = np.concatenate(keep) if keep else np.empty(0, np.int64)
    return MixCandidates(state.row_ids_N[pos], np.asarray(state.embeddings_N_D[pos], dtype=np.float32))


@shard_op(mutates=False)
def alfa_random(state: ShardState, seed: int, round: int, k: int, exclude: np.ndarray) -> Draws:
    """This shard's best ``k`` candidate rows outside ``exclude`` by keyed uniform noise."""
    cand = np.flatnonzero(state.candidates_N & ~np.isin(state.row_ids_N, exclude))
    u = noise.keyed_uniform(seed, round, state.row_ids_N[cand])
    o = np.lexsort((state.row_ids_N[cand], -u))[:k]
    return Draws(u[o], state.row_ids_N[cand][o])


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    eps = options["eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        raise AlscaleError(f"option eps of strategy alfamix must be in (0, 1]; got {short_repr(eps)}")
    for key in ("head", "labels"):
        if options[key] is not None and isinstance(options[key], (str, int, float, bool)):
            raise AlscaleError(f"option {key} of strategy alfamix is filled by the job (the model's head layer, "
                               "the labelled set's labels); do not set it in the job file")
    return options


def select_alfamix(shards: Shards, budget: int, *, options: dict[str, Any], seed: int = 0,
                   round: int = 0) -> Selection:
    """Registry entry ``alfamix`` (module docstring)."""
    head, labels = options.get("head"), options.get("labels")
    if head is None or labels is None:
        raise AlscaleError("strategy alfamix needs the classifier head (W, b) and the labelled rows' labels: in a "
                           "job, a model with a linear 'head' layer and a labelled set with labels (a ledger or a "
                           "'label' column); in alscale.select, head=(W, b) and labels=")
    budget = min(budget, shards.n_candidates())
    if budget == 0:
        return Selection(np.empty(0, np.int64), np.empty(0), "alfamix")
    c_ids, c_emb = _candidates(shards, head, labels, float(options["eps"]))
    if c_ids.size <= budget:
        picks, scores = c_ids.tolist(), [1.0] * c_ids.size
        progress.advance(len(picks))
    else:
        picks, scores = _cluster_picks(c_ids, c_emb, budget, seed, round)
    if len(picks) < budget:  # fewer candidates than the budget: the rest at random, as the reference
        parts = shards.call(_OP + "alfa_random", seed, round, budget - len(picks), np.asarray(picks, np.int64))
        u = np.concatenate([p.u_K for p in parts])
        r = np.concatenate([p.row_ids_K for p in parts])
        o = np.lexsort((r, -u))[:budget - len(picks)]
        picks += r[o].tolist()
        scores += [0.0] * o.shape[0]
        progress.advance(int(o.shape[0]))
    return Selection(np.asarray(picks, np.int64), np.asarray(scores, np.float64), "alfamix")


def _candidates(shards: Shards, head: Any, labels: Any, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The candidate rows (ids ascending, embeddings): rows whose prediction some mixture
    toward a labelled class's anchor changes; none without labelled rows."""
    w, b = (np.asarray(x, dtype=np.float64) for x in head)
    lab_ids = np.asarray(labels[0], dtype=np.int64)
    lab_y = np.asarray(labels[1], dtype=np.int64)
    parts = shards.take(None, ("embeddings",), where="labeled")
    ids = np.concatenate([p.row_ids_R for p in parts])
    emb = np.concatenate([p.embeddings_R_D for p in parts]).astype(np.float64)
    order = np.argsort(ids)
    ids, emb = ids[order], emb[order]
    srt = np.argsort(lab_ids)
    lab_ids, lab_y = lab_ids[srt], lab_y[srt]
    pos = np.searchsorted(lab_ids, ids)
    known = (pos < lab_ids.size) & (lab_ids[np.minimum(pos, lab_ids.size - 1)] == ids) if lab_ids.size else \
        np.zeros(ids.size, bool)
    if not known.any():  # cold start: no anchors, no candidates; the whole budget is random, as the reference
        logger.warning("alfamix: no labelled row has a label, so there are no anchors; selecting at random")
        return np.empty(0, np.int64), np.empty((0, 1), np.float32)
    y = lab_y[pos[known]]
    anchors = np.stack([emb[known][y == c].mean(axis=0) for c in np.unique(y)])
    parts = shards.call(_OP + "alfa_candidates", anchors, w, b, eps)
    c_ids = np.concatenate([p.row_ids_C for p in parts])
    c_emb = np.concatenate([p.embeddings_C_D for p in parts])
    o = np.argsort(c_ids)
    return c_ids[o], c_emb[o]


def _cluster_picks(c_ids: np.ndarray, c_emb: np.ndarray, budget: int, seed: int, round: int
                   ) -> tuple[list[int], list[float]]:
    """k-means of the L2-normalised candidates into ``budget`` clusters, then the candidate
    nearest each centroid (each row once); scores are minus the distances."""
    from alscale.strategies.clustering import kmeans
    from alscale.strategies.progress import reporting

    x = c_emb.astype(np.float64)
    x = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    local = FanoutShards(InProcessFanout([ShardState(c_ids, None, x)]))
    with reporting(lambda n: None):
        km = kmeans(local, budget, seed=seed, round=round)
    ids_B, d2_B = nearest_per_centroid(x, c_ids, km["centers"].astype(np.float32))
    progress.advance(int(ids_B.shape[0]))
    return ids_B.tolist(), (-np.sqrt(d2_B)).tolist()


def nearest_per_centroid(x_C_D: np.ndarray, ids_C: np.ndarray, centers_B_D: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """For centroid ``j = 0, 1, ...`` in turn, the row nearest it that no earlier centroid
    took (canonical squared distance, ties to the lower id): ``(ids_B, d2_B)``.

    On the neighbour layer: one exact k-NN of all centroids (a few neighbours each, Voronoi-cell
    pruned for many centroids) instead of a full pass over the rows per centroid; a centroid
    whose neighbours were all taken searches again with enough neighbours to find a free row.
    The picks equal the per-centroid full pass."""
    from alscale.index.neighbours import make_index

    ix = make_index("exact", x_C_D, ids_C, params={"queries": int(centers_B_D.shape[0])})
    b, n = centers_B_D.shape[0], x_C_D.shape[0]
    k = min(n, 8)
    d2, nb = ix.search(centers_B_D, k)
    taken: set[int] = set()
    out_i = np.empty(b, dtype=np.int64)
    out_d = np.empty(b)
    for j in range(b):
        dj, ij = d2[j], nb[j]
        free = [t for t in range(k) if int(ij[t]) not in taken]
        if not free:  # every neighbour taken: at most len(taken) rows are, so one more is free
            dj, ij = (a[0] for a in ix.search(centers_B_D[j:j + 1], min(n, len(taken) + 1)))
            free = [t for t in range(ij.shape[0]) if int(ij[t]) not in taken]
        out_i[j], out_d[j] = ij[free[0]], dj[free[0]]
        taken.add(int(out_i[j]))
    return out_i, out_d


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class AlfaMixOptions(_spec.StrategyOptions):
    """Options of ``alfamix``: ``eps``; ``head`` and ``labels`` are filled in by the caller
    (the model's last linear layer, the labelled rows' labels: ``needs.head``/``needs.labels``)."""

    eps: float = 0.2
    head: Any = None
    labels: Any = None

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


SPEC = _spec.StrategySpec(
    "alfamix", "loop",
    "feature mixing toward labelled class anchors, then k-means over the changed rows (Parvaneh et al., CVPR 2022)",
    options_type=AlfaMixOptions, needs=_spec.Needs(log_probs=True, embeddings=True, head=True, labels=True),
    supports=_spec.Supports(keeps=("log_probs", "embeddings")), select=select_alfamix)

