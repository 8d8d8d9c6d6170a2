"""BASE, Balanced Selection (Emam et al., "Active Learning at the ImageNet Scale", arXiv 2111.12880).

For a row with (penultimate) embedding ``h``, a linear head ``z = W h + b`` and predicted class
``ŷ = argmax z``, the distance of ``h`` to the decision boundary between ``ŷ`` and another
class ``c`` is the norm of the smallest perturbation ``ε`` with ``z_ŷ(h + ε) = z_c(h + ε)``
(the paper's margin in feature space, §4; the authors' ``MASESampler.compute_margins``)::

    d(x, c) = |(w_ŷ − w_c)ᵀ h + (b_ŷ − b_c)| / ‖w_ŷ − w_c‖ = (z_ŷ − z_c) / ‖w_ŷ − w_c‖      (c ≠ ŷ)
    d(x, ŷ) = min_{c' ≠ ŷ} d(x, c')                                   (the row's own class)

BASE then takes, for each class c, the unlabelled rows with the smallest ``d(·, c)`` — the
rows closest to class c's boundary, whichever class they are predicted as — ``B // C`` per
class (the first ``B mod C`` classes one more), so the batch is balanced over classes even
when the model's predictions are not.

Computation at scale: a log-softmax preserves logit differences, so ``z_ŷ − z_c = log p_ŷ −
log p_c`` comes from the log-probs the shards already hold; the denominator depends only on
the class pair (a ``C × C`` table from the head's weights, computed on the coordinator). No
embedding is read. With K > 1 MC samples ``log p`` is the log of the mean probability over K
(ŷ its argmax, ties to the lower class, as the class quotas). Options:

- ``distance``: ``feature`` (the paper's, needs ``head``), ``logit`` (denominator 1: the logit
  margin ``z_ŷ − z_c``, for a pool that has only log-probs) or ``auto`` (feature when a head is
  known, else logit; the manifest's options record which).
- ``order``: ``round_robin`` (default: class 0, 1, …, C−1, 0, 1, … each takes its closest
  not-yet-picked row) or ``sequential`` (the authors' code: class 0 takes all its quota, then
  class 1 among the rest, …). Both give exactly ``B // C`` (+1) picks per class; they differ
  only when a row is among the closest of two classes.
- ``head``: ``(W [C, E], b [C])`` or ``W``, filled by a job from its model's ``head`` layer.

Exact and shard-invariant: each class's stream (all candidates by ``(d, row_id)``) is merged
over the shards lazily, page by page, by the same per-class streams as the class quotas
(:mod:`alscale.strategies.quotas`); ties go to the lower ``row_id``. The reported score of a
pick is ``−d(x, c)`` for the class c it was taken for (higher = closer to the boundary).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import progress
from alscale.strategies import spec as _spec
from alscale.strategies.quotas import Page, class_streams, predicted_class
from alscale.strategies.shards import Shards, ShardState, shard_op, topk_order
from alscale.types import Selection

logger = logging.getLogger(__name__)

_OP = "alscale.strategies.base."
_KEY = "base_balanced"
_ROWS = 65536  # rows per block of the O(N·C) passes
DISTANCES = ("auto", "feature", "logit")
ORDERS = ("round_robin", "sequential")


def mean_log_probs(log_probs_N_K_C: np.ndarray) -> np.ndarray:
    """``log mean_k p_k`` (float64 ``[N, C]``); the log-probs themselves when K = 1."""
    lp = np.asarray(log_probs_N_K_C, dtype=np.float64)
    if lp.shape[1] == 1:
        return lp[:, 0, :]
    top = lp.max(axis=1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = safe[:, 0, :] + np.log(np.exp(lp - safe).mean(axis=1))
    return np.where(np.isfinite(top[:, 0, :]), out, -np.inf)


def pair_norms(w_C_E: np.ndarray) -> np.ndarray:
    """``‖w_a − w_b‖`` for every class pair (float64 ``[C, C]``), the denominators of ``d``."""
    w = np.asarray(w_C_E, dtype=np.float64)
    out = np.empty((w.shape[0], w.shape[0]), dtype=np.float64)
    for a in range(w.shape[0]):  # exact differences (a Gram-matrix form loses digits for close rows)
        out[a] = np.linalg.norm(w[a][None, :] - w, axis=1)
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with a zero denominator (two identical head rows) read as +inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(den > 0, out, np.inf)


def boundary_distances(log_probs_N_K_C: np.ndarray, norms_C_C: np.ndarray | None = None) -> np.ndarray:
    """``d(x, c)`` for every row and class (float64 ``[N, C]``, module docstring), in one piece:
    the reference for small N (the shards compute one class at a time)."""
    m = mean_log_probs(log_probs_N_K_C)
    n, c = m.shape
    pred = predicted_class(log_probs_N_K_C)
    top = m[np.arange(n), pred]
    den = np.ones((n, c)) if norms_C_C is None else np.asarray(norms_C_C, np.float64)[pred]
    d = _ratio(top[:, None] - m, den)
    d[np.arange(n), pred] = np.inf
    own = d.min(axis=1)
    d[np.arange(n), pred] = own
    return d


def _own_distance(m_N_C: np.ndarray, pred_N: np.ndarray, norms_C_C: np.ndarray | None) -> np.ndarray:
    """``d(x, ŷ)``: the nearest boundary leaving the predicted class, block by block."""
    n, c = m_N_C.shape
    out = np.empty(n, dtype=np.float64)
    for r0 in range(0, n, _ROWS):
        m = np.asarray(m_N_C[r0:r0 + _ROWS], dtype=np.float64)
        p = pred_N[r0:r0 + _ROWS]
        idx = np.arange(m.shape[0])
        top = m[idx, p]
        den = np.ones_like(m) if norms_C_C is None else norms_C_C[p]
        d = _ratio(top[:, None] - m, den)
        d[idx, p] = np.inf
        out[r0:r0 + _ROWS] = d.min(axis=1)
    return out


@dataclass
class BaseShard:
    """One shard's BASE state (in ``ShardState.strategy_state["base_balanced"]``): the log mean
    probabilities ``m_N_C`` (a view of the log-probs when K = 1), the predicted class, its
    log-prob, the own-class distance, the class-pair norms (None: logit distance) and, per
    class touched, the sorted prefix of its candidates (positions, keys = −d)."""

    m_N_C: np.ndarray
    pred_N: np.ndarray
    top_N: np.ndarray
    own_N: np.ndarray
    norms_C_C: np.ndarray | None
    order: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@shard_op
def base_prepare(state: ShardState, norms_C_C: np.ndarray | None) -> int:
    """Predicted class, its log-prob and the own-class distance of every row; returns C."""
    if state.log_probs_N_K_C is None:
        raise AlscaleError("strategy base_balanced needs the model's log-probs, but this shard has none")
    lp = state.log_probs_N_K_C
    # K = 1: the log-probs themselves (a view, cast per use: float32 -> float64 is exact), so
    # the shard holds no second N x C copy; K > 1: the float64 log mean probability.
    m = lp[:, 0, :] if lp.shape[1] == 1 else mean_log_probs(lp)
    pred = predicted_class(lp)
    norms = None if norms_C_C is None else np.asarray(norms_C_C, dtype=np.float64)
    if norms is not None and norms.shape[0] != m.shape[1]:
        raise AlscaleError(f"strategy base_balanced: the head has {norms.shape[0]} classes but the log-probs "
                           f"{m.shape[1]}; give the head of the model that produced them")
    state.strategy_state[_KEY] = BaseShard(m, pred, np.asarray(m[np.arange(m.shape[0]), pred], dtype=np.float64),
                                           _own_distance(m, pred, norms), norms)
    return int(m.shape[1])


def _class_distance(st: BaseShard, c: int, pos: np.ndarray) -> np.ndarray:
    """``d(x, c)`` of the rows at ``pos``."""
    pred = st.pred_N[pos]
    den = 1.0 if st.norms_C_C is None else st.norms_C_C[pred, c]
    d = _ratio(st.top_N[pos] - np.asarray(st.m_N_C[pos, c], dtype=np.float64), np.broadcast_to(den, pos.shape))
    return np.where(pred == c, st.own_N[pos], d)


@shard_op
def base_pages(state: ShardState, requests: list[tuple[int, int]], page: int) -> list[Page]:
    """For each (class, start rank): this shard's candidates of ranks ``[start, start + page)``
    by ``(d(·, class) ascending, row_id ascending)``, as (keys = −d, row_ids).

    A class's order is kept as a sorted prefix, extended (doubled) only when a request reaches
    past it, so a batch costs O(N) per class touched, not a full sort.
    """
    st: BaseShard = state.strategy_state[_KEY]
    cand = np.flatnonzero(state.candidates_N)
    out = []
    for c, start in requests:
        have = st.order.get(c)
        need = start + page
        if have is None or (have[0].shape[0] < need and have[0].shape[0] < cand.shape[0]):
            want = max(need, 2 * (0 if have is None else have[0].shape[0]))
            d = _class_distance(st, c, cand)
            top = topk_order(-d, state.row_ids_N[cand], want)
            have = (cand[top], -d[top])
            st.order[c] = have
        pos, keys = have[0][start:need], have[1][start:need]
        out.append(Page(keys.astype(np.float64), state.row_ids_N[pos]))
    return out


def _head_weights(head: Any) -> np.ndarray:
    w = head[0] if isinstance(head, (tuple, list)) and len(head) == 2 and np.ndim(head[0]) == 2 else head
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or not np.isfinite(w).all():
        raise AlscaleError(f"option head of strategy base_balanced must be the head's weights W [C, E] (or (W, b)) "
                           f"with finite values; got an array of shape {w.shape}")
    return w


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """``distance`` in auto/feature/logit, ``order`` in round_robin/sequential, ``head`` not a scalar."""
    if options["distance"] not in DISTANCES:
        raise AlscaleError(f"option distance of strategy base_balanced must be one of {', '.join(DISTANCES)}; "
                           f"got {short_repr(options['distance'])}")
    if options["order"] not in ORDERS:
        raise AlscaleError(f"option order of strategy base_balanced must be one of {', '.join(ORDERS)}; "
                           f"got {short_repr(options['order'])}")
    head = options["head"]
    if head is not None and isinstance(head, (str, int, float, bool)):
        raise AlscaleError("option head of strategy base_balanced is filled by the job (the model's 'head' "
                           "layer); do not set it in the job file")
    return options


def select_base(shards: Shards, budget: int, *, options: Mapping[str, Any], seed: int = 0,
                round: int = 0) -> Selection:
    """Registry entry ``base_balanced`` (module docstring). ``seed``/``round`` are unused: BASE is
    deterministic."""
    head = options.get("head")
    distance = options.get("distance", "auto")
    if distance == "feature" and head is None:
        raise AlscaleError("strategy base_balanced with distance: feature needs the classifier head: in a job, a "
                           "model with a linear 'head' layer; in alscale.select, head=(W, b); or use distance: "
                           "logit")
    use_head = head is not None and distance != "logit"
    norms = pair_norms(_head_weights(head)) if use_head else None
    budget = min(int(budget), shards.n_candidates())
    if budget <= 0:
        return Selection(np.empty(0, np.int64), np.empty(0, np.float64), "base_balanced")
    cs = shards.call(_OP + "base_prepare", norms)
    c = int(cs[0])
    if c < 2:
        raise AlscaleError(f"strategy base_balanced needs at least 2 classes; the model's outputs have {c}")
    logger.info("BASE: %s-space distances, %s over %d classes", "feature" if use_head else "logit",
                options.get("order", "round_robin"), c)
    n_shards = len(cs)
    page = max(16, 2 * budget // c + 1)
    streams, refill = class_streams(shards, _OP + "base_pages", n_shards, c, page)

    refill(list(range(c)))
    taken: set[int] = set()
    ids_B: list[int] = []
    keys_B: list[float] = []

    def take(j: int) -> None:
        """Class j's closest row not picked yet (its stream holds every candidate)."""
        stream = streams[j]
        while True:
            if stream.dry():
                refill([j])
            h = stream.head()
            assert h is not None, "a class stream ran out before the budget"  # budget <= candidates
            stream.advance(h)
            if h.row_id not in taken:
                taken.add(h.row_id)
                ids_B.append(h.row_id)
                keys_B.append(h.key)
                progress.advance()
                return

    if options.get("order", "round_robin") == "sequential":
        for j in range(c):
            for _ in range(budget // c + int(j < budget % c)):
                take(j)
    else:
        while len(ids_B) < budget:
            take(len(ids_B) % c)
    return Selection(np.asarray(ids_B, np.int64), np.asarray(keys_B, np.float64), "base_balanced")


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class BaseOptions(_spec.StrategyOptions):
    """Options of ``base_balanced`` (module docstring); ``head`` is filled in by a job from its
    model (``needs.head = "optional"``)."""

    distance: str = "auto"
    order: str = "round_robin"
    head: Any = None

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


SPEC = _spec.StrategySpec(
    "base_balanced", "loop",
    "per class, the rows closest to its decision boundary, balanced over classes (BASE; Emam et al., "
    "arXiv 2111.12880)",
    options_type=BaseOptions, needs=_spec.Needs(log_probs=True, head="optional"),
    supports=_spec.Supports(keeps=("log_probs",)), aliases=("balanced_selection", "base_al"), select=select_base,
    citation="Emam et al., Active Learning at the ImageNet Scale, arXiv 2111.12880")
