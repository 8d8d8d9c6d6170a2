"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022): greedy maximum coverage of
δ-balls, for very small budgets on self-supervised embeddings.

As the paper and its reference code define it:

- embeddings are L2-normalised (``normalize: true``);
- the graph has a directed edge ``x → x'`` when ``‖x − x'‖ < δ`` (every row covers itself);
- rows within δ of a labelled row are covered; repeatedly the row with the most edges to
  uncovered rows is picked (ties to the lower ``row_id``) and everything in its ball becomes
  covered; when no row covers anything new, the rest of the budget is uniformly random
  (keyed by ``(seed, round, row_id)``), as the reference does;
- ``delta: auto`` applies the paper's purity rule: with k-means pseudo-labels
  (``n_classes`` clusters, :mod:`alscale.strategies.clustering`), a ball is pure when all its
  rows share its center's label, i.e. when δ ≤ the distance from the center to its nearest
  row of another label; δ is the largest value at which at least ``purity`` (0.95) of the
  balls are pure — the exact value, where the paper scans a grid of δ.

Sharded and bounded: the rows are streamed to every shard in chunks of ``chunk_rows``
(through the coordinator); each shard keeps, per row it holds, the ids of its neighbours
within δ (sparse edges, canonical float64 distances, so the graph is the same for any
sharding) and a degree. Each pick costs one fan-out (the picked row's ball goes out, the
shards lower their degrees and offer their best row). All-pairs distances cost N²·D; the
number of edges is capped by ``max_edges`` (a clear error names δ and the count).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.index.exact import sq_dist_rows
from alscale.strategies import clustering, noise, progress
from alscale.strategies import spec as _spec
from alscale.strategies.clustering import kmeans
from alscale.strategies.shards import Shards, ShardState, shard_op
from alscale.types import Selection
from alscale.validation import check_int_options

logger = logging.getLogger(__name__)

_OP = "alscale.strategies.probcover."
_PAIRS = 1 << 22  # row pairs per block of canonical distances


@dataclass
class DeltaGraph:
    """The δ-ball graph of a shard's rows: CSR by source row (``csr_ptr_N1`` into the target
    ids ``csr_dst_E``), the reverse map from target id to source rows (``rev_ids_E``
    sorted, ``rev_src_E``), and each row's current ``degree_N`` (edges to rows not yet
    covered)."""

    csr_ptr_N1: np.ndarray
    csr_dst_E: np.ndarray
    rev_ids_E: np.ndarray
    rev_src_E: np.ndarray
    degree_N: np.ndarray

    @classmethod
    def from_edges(cls, src_E: np.ndarray, dst_E: np.ndarray, n: int) -> DeltaGraph:
        """From edges (source row position, target row id)."""
        o = np.lexsort((dst_E, src_E))
        ptr = np.concatenate([[0], np.cumsum(np.bincount(src_E, minlength=n))])
        o2 = np.argsort(dst_E, kind="stable")
        return cls(ptr, dst_E[o], dst_E[o2], src_E[o2], np.diff(ptr).astype(np.int64))

    def ball(self, pos: int) -> np.ndarray:
        """Target ids of the edges from the row at ``pos``."""
        return self.csr_dst_E[self.csr_ptr_N1[pos]:self.csr_ptr_N1[pos + 1]]

    def balls(self, positions: np.ndarray) -> np.ndarray:
        """The union of the balls of the rows at ``positions`` (sorted ids)."""
        parts = [self.ball(int(p)) for p in positions]
        return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)

    def cover(self, new_ids: np.ndarray) -> None:
        """``new_ids`` became covered: lower the degree of every row with an edge to one."""
        new_ids = np.asarray(new_ids, np.int64)
        if new_ids.size == 0:
            return
        lo = np.searchsorted(self.rev_ids_E, new_ids, side="left")
        hi = np.searchsorted(self.rev_ids_E, new_ids, side="right")
        if (hi > lo).any():
            np.subtract.at(self.degree_N, np.concatenate([self.rev_src_E[a:b] for a, b in zip(lo, hi) if b > a]), 1)


@dataclass
class ProbCoverShard:
    """One shard's ProbCover state (``state.strategy_state["probcover"]``): its rows as the
    strategy sees them (``x_N_D``, L2-normalised when asked, float32); the all-pairs
    construction's purity distances ``r_sq_N`` and edge lists; the frozen ``graph``; the
    rows already picked ``picked_N``; and, for :mod:`alscale.strategies.probcover_graph`, the
    neighbour ``index`` over ``x_N_D``, the rows ordered by pseudo-label ``by_label`` and the
    row positions grouped by the index's cells or lists ``order`` (the graph's query order)."""

    x_N_D: np.ndarray
    r_sq_N: np.ndarray | None = None
    src: list[np.ndarray] = field(default_factory=list)
    dst: list[np.ndarray] = field(default_factory=list)
    graph: DeltaGraph | None = None
    picked_N: np.ndarray | None = None
    index: Any = None
    by_label: Any = None
    order: Any = None

    def finish(self, n: int) -> int:
        """Freeze the edge lists into :attr:`graph`; returns the number of edges."""
        src = np.concatenate(self.src or [np.empty(0, np.int64)])
        dst = np.concatenate(self.dst or [np.empty(0, np.int64)])
        self.src, self.dst = [], []
        self.graph = DeltaGraph.from_edges(src, dst, n)
        self.picked_N = np.zeros(n, dtype=bool)
        return int(dst.shape[0])


def shard(state: ShardState, normalize: bool) -> ProbCoverShard:
    """This shard's :class:`ProbCoverShard` (created on first use, with its rows)."""
    pc = state.strategy_state.get("probcover")
    if pc is None:
        if state.embeddings_N_D is None:
            raise ValueError("ProbCover needs embeddings, but this shard has none")
        x = np.asarray(state.embeddings_N_D, dtype=np.float64)
        if normalize:
            norm = np.sqrt((x * x).sum(axis=1, keepdims=True))
            x = x / np.where(norm > 0, norm, 1.0)
        pc = state.strategy_state["probcover"] = ProbCoverShard(x.astype(np.float32))
    return pc


def _normed(state: ShardState, normalize: bool) -> np.ndarray:
    return shard(state, normalize).x_N_D


def _pairs_within(a: np.ndarray, b: np.ndarray, limit_sq: float, *, strict: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i of a, j of b) with canonical squared distance < limit_sq (or <=), and the values."""
    out_i, out_j, out_d = [], [], []
    rows = max(1, _PAIRS // max(1, b.shape[0]))
    a_sq = (a.astype(np.float64) ** 2).sum(1)
    b_sq = (b.astype(np.float64) ** 2).sum(1)
    for r0 in range(0, a.shape[0], rows):
        ab = a[r0:r0 + rows].astype(np.float64)
        approx = a_sq[r0:r0 + rows, None] + b_sq[None, :] - 2.0 * (ab @ b.T.astype(np.float64))
        i, j = np.nonzero(approx <= limit_sq + 1e-6 * (1.0 + limit_sq))  # float64 slack, then canonical
        d = sq_dist_rows(a[r0 + i], b[j])
        keep = d < limit_sq if strict else d <= limit_sq
        out_i.append(r0 + i[keep])
        out_j.append(j[keep])
        out_d.append(d[keep])
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


# -- shard ops: the purity rule --------------------------------------------------------

class Chunk(NamedTuple):
    """Rows of one shard: ids, (normalised) embeddings, k-means pseudo-labels (empty before
    the k-means)."""

    row_ids_M: np.ndarray
    x_M_D: np.ndarray
    labels_M: np.ndarray


class Draws(NamedTuple):
    """A shard's best rows by keyed uniform noise (the random fill): noise and ids."""

    u_K: np.ndarray
    row_ids_K: np.ndarray


class Best(NamedTuple):
    """A shard's best row by current degree (ties: lower id); ``(-1, -1)`` when none."""

    degree: int
    row_id: int


@shard_op
def pc_chunk(state: ShardState, start: int, stop: int, normalize: bool) -> Chunk:
    """Rows ``[start, stop)`` of this shard."""
    x = _normed(state, normalize)
    labels = clustering.labels(state, required=False)
    lab = labels[start:stop] if labels is not None else np.empty(0, np.int64)
    return Chunk(state.row_ids_N[start:stop], x[start:stop], lab)


@shard_op
def pc_other_label_dist(state: ShardState, x_M_D: np.ndarray, labels_M: np.ndarray, normalize: bool) -> None:
    """Lower each row's squared distance to its nearest row of another pseudo-label."""
    pc = shard(state, normalize)
    x = pc.x_N_D
    mine = clustering.labels(state)
    if pc.r_sq_N is None:
        pc.r_sq_N = np.full(x.shape[0], np.inf)
    r = pc.r_sq_N
    rows = max(1, _PAIRS // max(1, x_M_D.shape[0]))
    m_sq = (x_M_D.astype(np.float64) ** 2).sum(1)
    for r0 in range(0, x.shape[0], rows):
        xb = x[r0:r0 + rows]
        approx = (xb.astype(np.float64) ** 2).sum(1)[:, None] + m_sq[None, :] - 2.0 * (
            xb.astype(np.float64) @ x_M_D.T.astype(np.float64))
        approx[mine[r0:r0 + rows, None] == labels_M[None, :]] = np.inf
        j = np.argmin(approx, axis=1)
        # Canonical value of every pair within float64 slack of the row's approximate minimum.
        lim = approx[np.arange(approx.shape[0]), j] + 1e-6 * (1.0 + np.abs(approx[np.arange(approx.shape[0]), j]))
        i_idx, j_idx = np.nonzero(approx <= lim[:, None])
        if i_idx.size:
            d = sq_dist_rows(xb[i_idx], x_M_D[j_idx])
            np.minimum.at(r, r0 + i_idx, d)


@shard_op(mutates=False)
def pc_other_label_values(state: ShardState) -> np.ndarray:
    return state.strategy_state["probcover"].r_sq_N


# -- shard ops: the graph and the greedy ---------------------------------------------------

@shard_op
def pc_edges(state: ShardState, ids_M: np.ndarray, x_M_D: np.ndarray, delta_sq: float, normalize: bool) -> int:
    """Add edges from this shard's rows to the chunk's rows within δ; returns edges added."""
    pc = shard(state, normalize)
    i, j, _ = _pairs_within(pc.x_N_D, x_M_D, delta_sq)
    pc.src.append(i.astype(np.int64))
    pc.dst.append(np.asarray(ids_M, np.int64)[j])
    return int(i.size)


@shard_op
def pc_finish(state: ShardState) -> None:
    """Freeze the edges: CSR by source row, and (target id -> source rows) for the updates."""
    state.strategy_state["probcover"].finish(state.row_ids_N.shape[0])


@shard_op(mutates=False)
def pc_ball(state: ShardState, row_ids: np.ndarray) -> np.ndarray:
    """The union of the balls (neighbour ids) of the requested rows held here."""
    return state.strategy_state["probcover"].graph.balls(np.flatnonzero(np.isin(state.row_ids_N, row_ids)))


@shard_op
def pc_cover(state: ShardState, new_ids: np.ndarray, exclude_ids: np.ndarray) -> Best:
    """Mark ``new_ids`` covered (lowering the degree of every row with an edge to one), take
    ``exclude_ids`` out of the candidates; return this shard's best (degree, row_id)."""
    pc = state.strategy_state["probcover"]
    pc.graph.cover(new_ids)
    if np.asarray(exclude_ids).size:
        pc.picked_N |= np.isin(state.row_ids_N, exclude_ids)
    cand = np.flatnonzero(state.candidates_N & ~pc.picked_N)
    if cand.size == 0:
        return Best(-1, -1)
    deg = pc.graph.degree_N[cand]
    best = deg.max()
    at = cand[deg == best]
    return Best(int(best), int(state.row_ids_N[at].min()))


@shard_op
def pc_random(state: ShardState, seed: int, round: int, k: int) -> Draws:
    """This shard's best ``k`` unpicked candidate rows by keyed uniform noise (the random fill)."""
    cand = np.flatnonzero(state.candidates_N & ~state.strategy_state["probcover"].picked_N)
    u = noise.keyed_uniform(seed, round, state.row_ids_N[cand])
    o = np.lexsort((state.row_ids_N[cand], -u))[:k]
    return Draws(u[o], state.row_ids_N[cand][o])


# -- coordinator --------------------------------------------------------------------------

def random_fill(shards: Shards, seed: int, round: int, k: int) -> list[int]:
    """The ``k`` unpicked candidate rows of largest keyed uniform noise (ties: lower id), as
    the reference fills the budget when nothing is left to cover."""
    parts = shards.call(_OP + "pc_random", seed, round, k)
    u = np.concatenate([p.u_K for p in parts])
    r = np.concatenate([p.row_ids_K for p in parts])
    return r[np.lexsort((r, -u))[:k]].tolist()


def _chunks(shards: Shards, sizes: list[int], chunk_rows: int, normalize: bool):
    """Every row of the pool, shard by shard, in chunks: (row_ids, normalised x, labels)."""
    for s, n in enumerate(sizes):
        for start in range(0, n, chunk_rows):
            args = [(start, min(n, start + chunk_rows), normalize) if t == s else (0, 0, normalize)
                    for t in range(len(sizes))]
            yield shards.call_each(_OP + "pc_chunk", args)[s]


def purity_delta(shards: Shards, *, n_classes: int, purity: float, normalize: bool, chunk_rows: int,
                 seed: int, round: int, kmeans_iters: int) -> float:
    """The largest δ at which at least ``purity`` of the δ-balls are pure (module docstring)."""
    kmeans(shards, int(min(n_classes, shards.n_rows())), seed=seed, round=round, max_iters=kmeans_iters)
    sizes = [int(v) for v in shards.call(_OP + "pc_size")]
    for _ids, x, lab in _chunks(shards, sizes, chunk_rows, normalize):
        shards.call(_OP + "pc_other_label_dist", x, lab, normalize)
    r_sq = np.sort(np.concatenate(shards.call(_OP + "pc_other_label_values")))[::-1]
    m = max(1, math.ceil(purity * r_sq.shape[0]))
    return float(math.sqrt(r_sq[m - 1])) if np.isfinite(r_sq[m - 1]) else float("inf")


@shard_op(mutates=False)
def pc_size(state: ShardState) -> int:
    return int(state.row_ids_N.shape[0])


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    d = options["delta"]
    if d != "auto" and (isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d <= 0):
        raise AlscaleError("option delta of strategy probcover must be a positive number or 'auto'; "
                           f"got {short_repr(d)}")
    p = options["purity"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise AlscaleError(f"option purity of strategy probcover must be in (0, 1]; got {short_repr(p)}")
    check_int_options(options, ("n_classes", "chunk_rows", "max_edges", "kmeans_iters"), strategy="probcover")
    from alscale.index.neighbours import check_mode

    check_mode(options["index"], "option index of strategy probcover")
    if options["index_params"] is not None and not isinstance(options["index_params"], dict):
        raise AlscaleError(f"option index_params of strategy probcover must be a mapping or null; "
                           f"got {short_repr(options['index_params'])}")
    if options["purity_sample"] is not None:
        check_int_options(options, ("purity_sample",), strategy="probcover")
    check_int_options(options, ("offer",), strategy="probcover")
    if not isinstance(options["normalize"], bool):
        raise AlscaleError("option normalize of strategy probcover must be true or false; "
                           f"got {short_repr(options['normalize'])}")
    return options


def select_probcover(shards: Shards, budget: int, *, options: dict[str, Any], seed: int = 0,
                     round: int = 0) -> Selection:
    """Registry entries ``probcover`` and ``probcover_approx`` (module docstring), on the
    neighbour layer (:mod:`alscale.strategies.probcover_graph`). Labelled rows must be
    excluded already."""
    from alscale.strategies import probcover_graph

    name = "probcover" if options["index"] == "exact" and options["purity_sample"] is None else "probcover_approx"
    budget = min(budget, shards.n_candidates())
    if budget == 0:
        return Selection(np.empty(0, np.int64), np.empty(0), name)
    ids_B, scores_B, info = probcover_graph.select(shards, budget, options, seed, round)
    logger.info("%s: δ = %.6g, %d edges, index %s", name, info["delta"], info["edges"], info["index"])
    return Selection(ids_B, scores_B, name)


def select_probcover_allpairs(shards: Shards, budget: int, *, options: dict[str, Any], seed: int = 0,
                              round: int = 0) -> Selection:
    """The all-pairs float64 construction (N²·E, two fan-outs per pick): the reference the
    neighbour-layer ProbCover is tested against. Labelled rows must be excluded already."""
    n_cand = shards.n_candidates()
    budget = min(budget, n_cand)
    if budget == 0:
        return Selection(np.empty(0, np.int64), np.empty(0), "probcover")
    normalize, chunk = bool(options["normalize"]), int(options["chunk_rows"])
    delta = options["delta"]
    if delta == "auto":
        delta = purity_delta(shards, n_classes=options["n_classes"], purity=options["purity"], normalize=normalize,
                             chunk_rows=chunk, seed=seed, round=round, kmeans_iters=options["kmeans_iters"])
    delta_sq = float(delta) ** 2
    sizes = [int(v) for v in shards.call(_OP + "pc_size")]
    edges = 0
    for ids, x, _ in _chunks(shards, sizes, chunk, normalize):
        edges += sum(shards.call(_OP + "pc_edges", ids, x, delta_sq, normalize))
        if edges > options["max_edges"]:
            raise AlscaleError(f"probcover: δ = {delta:.4g} gives more than {options['max_edges']:,} edges "
                               f"({shards.n_rows():,} rows); set a smaller strategy.options.delta or raise max_edges")
    shards.call(_OP + "pc_finish")
    labeled = np.concatenate(shards.call(_OP + "pc_labeled_ids"))
    covered = np.unique(np.concatenate(shards.call(_OP + "pc_ball", labeled))) if labeled.size else \
        np.empty(0, np.int64)
    best = shards.call(_OP + "pc_cover", covered, np.empty(0, np.int64))
    covered_set = set(covered.tolist())
    ids_B: list[int] = []
    scores_B: list[float] = []
    while len(ids_B) < budget:
        deg, row = max((b for b in best if b[1] >= 0), key=lambda b: (b[0], -b[1]))
        if deg <= 0:
            break
        ids_B.append(row)
        scores_B.append(float(deg))
        progress.advance()
        ball = np.unique(np.concatenate(shards.call(_OP + "pc_ball", np.array([row], np.int64))))
        new = np.array([r for r in ball.tolist() if r not in covered_set], dtype=np.int64)
        covered_set.update(new.tolist())
        best = shards.call(_OP + "pc_cover", new, np.array([row], np.int64))
    if len(ids_B) < budget:  # nothing left to cover: the reference fills the budget at random
        ids_B += random_fill(shards, seed, round, budget - len(ids_B))
        scores_B += [0.0] * (len(ids_B) - len(scores_B))
    return Selection(np.asarray(ids_B, np.int64), np.asarray(scores_B, np.float64), "probcover")


@shard_op(mutates=False)
def pc_labeled_ids(state: ShardState) -> np.ndarray:
    return state.row_ids_N[state.labeled_N]


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class ProbCoverOptions(_spec.StrategyOptions):
    """Options of ``probcover`` (checked by :func:`check_options`)."""

    delta: Any = "auto"
    purity: float = 0.95
    n_classes: int = 10
    normalize: bool = True
    chunk_rows: int = 8192
    max_edges: int = 200_000_000
    kmeans_iters: int = 100
    index: str = "exact"  # neighbour mode of the δ-graph (alscale.index.neighbours; issue 16)
    index_params: Any = None  # FAISS parameters of an approx_* index (nlist, nprobe, ...)
    purity_sample: Any = None  # an int: the purity rule on about that many keyed rows (approximate)
    offer: int = 32  # rows each shard offers per batched greedy update

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_options(options)


@dataclass(frozen=True)
class ProbCoverApproxOptions(ProbCoverOptions):
    """Options of ``probcover_approx``: an IVF-Flat δ-graph per shard, δ on a keyed sample."""

    chunk_rows: int = 16384
    index: str = "approx_ivf_flat"
    purity_sample: Any = 20000


SPEC = _spec.StrategySpec(
    "probcover", "loop", "greedy max coverage of δ-balls, δ by the purity rule (Yehuda et al., NeurIPS 2022)",
    options_type=ProbCoverOptions, needs=_spec.Needs(log_probs=False, embeddings=True),
    supports=_spec.Supports(keeps=("embeddings",)), select=select_probcover)

# ProbCover at scale (issue 16): the same greedy on an approximate δ-graph, approximate by name.
SPEC_APPROX = _spec.StrategySpec(
    "probcover_approx", "loop",
    "ProbCover on an approximate δ-graph (FAISS IVF per shard), δ by the purity rule on a sample",
    options_type=ProbCoverApproxOptions, needs=_spec.Needs(log_probs=False, embeddings=True),
    supports=_spec.Supports(keeps=("embeddings",)), select=select_probcover)
SPECS = (SPEC, SPEC_APPROX)
