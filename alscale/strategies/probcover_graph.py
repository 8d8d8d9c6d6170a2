"""ProbCover at scale: the δ-ball graph from range search, the purity rule from exact
per-label 1-NN, and greedy max coverage with batched, certified updates.

Same definitions as :mod:`alscale.strategies.probcover` (Yehuda et al., NeurIPS 2022),
built on the neighbour layer (:mod:`alscale.index.neighbours`) instead of all-pairs
float64 products:

- **Purity rule** (``delta: auto``): each row's squared distance to its nearest row of
  another k-means pseudo-label is an exact 1-NN query against the rows of the other labels
  (the shard keeps its rows sorted by label, so "the other labels" are two contiguous
  slices); the canonical float64 minimum over shards is the same number the all-pairs code
  computes. ``purity_sample: m`` (approximate, by name) applies the rule to about ``m``
  rows drawn by keyed uniform noise ``(seed, round, row_id)`` instead of all of them (the
  δ quantile of a sample: cost m·N·E instead of N²·E).
- **Graph**: every shard indexes its (normalised) rows; the pool streams through in chunks
  and each chunk's range search at radius δ (strict ``<``) gives the edges ``x → x'`` of
  the shard's rows. ``index: exact`` gives exactly the all-pairs graph (canonical float64
  decisions); ``index: approx_ivf_flat`` / ``approx_hnsw`` / ``approx_ivf_pq`` find most
  of the edges (each found edge is a true one) at a fraction of the cost.
- **Greedy with batched updates**: shards offer their ``offer`` best rows by current
  degree with their balls, and a bound (the next row's degree and id). Degrees only fall
  as rows get covered, so the coordinator keeps picking among the offers — recomputing
  their gains exactly from their balls — while the best gain beats every shard's bound
  (ties to the lower ``row_id``): exactly the one-pick-at-a-time greedy, with one fan-out
  per batch of picks instead of two per pick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from alscale.errors import AlscaleError
from alscale.index.neighbours import Candidates, exact_knn, is_exact
from alscale.strategies import clustering, noise, progress
from alscale.strategies.clustering import kmeans
from alscale.strategies.shards import Shards, ShardState, shard_op

_OP = "alscale.strategies.probcover_graph."
_PC = "alscale.strategies.probcover."


def _pc(state: ShardState, normalize: bool | None = None) -> Any:
    """This shard's :class:`alscale.strategies.probcover.ProbCoverShard` (``normalize``:
    create it when missing)."""
    from alscale.strategies.probcover import shard

    return shard(state, bool(normalize)) if normalize is not None else state.strategy_state["probcover"]


def _normed(state: ShardState, normalize: bool) -> np.ndarray:
    return _pc(state, normalize).x_N_D


@dataclass
class LabelOrder:
    """A shard's rows sorted by pseudo-label (for the other-label 1-NN of the purity rule):
    ``labels_N`` ascending, the rows ``x_N_D`` and their ``x_sq_N`` in that order, and the
    candidate passes built over label slices (``(label, 'lo' | 'hi')`` -> Candidates)."""

    labels_N: np.ndarray
    x_N_D: np.ndarray
    x_sq_N: np.ndarray
    cands: dict = field(default_factory=dict)


# -- purity rule ------------------------------------------------------------------------------

@shard_op(mutates=False)
def pcg_sample(state: ShardState, seed: int, round: int, frac: float, normalize: bool) -> Any:
    """This shard's rows with keyed uniform noise below ``frac`` (a ``probcover.Chunk``)."""
    from alscale.strategies.probcover import Chunk

    u = noise.keyed_uniform(seed, round, state.row_ids_N)
    pos = np.flatnonzero(u < frac)
    return Chunk(state.row_ids_N[pos], _normed(state, normalize)[pos], clustering.labels(state)[pos])


def _by_label(state: ShardState, normalize: bool) -> LabelOrder:
    pc = _pc(state, normalize)
    if pc.by_label is None:
        labels = np.asarray(clustering.labels(state), np.int64)
        order = np.argsort(labels, kind="stable")
        xs = np.ascontiguousarray(pc.x_N_D[order])
        pc.by_label = LabelOrder(labels[order], xs, np.einsum("nd,nd->n", xs, xs))
    return pc.by_label


@shard_op
def pcg_other_label(state: ShardState, x_M_D: np.ndarray, labels_M: np.ndarray, normalize: bool) -> np.ndarray:
    """Per query, the canonical squared distance to this shard's nearest row of another label."""
    lo = _by_label(state, normalize)
    out = np.full(x_M_D.shape[0], np.inf)
    for c in np.unique(labels_M):
        qpos = np.flatnonzero(labels_M == c)
        a = int(np.searchsorted(lo.labels_N, c, side="left"))
        b = int(np.searchsorted(lo.labels_N, c, side="right"))
        for part, (s0, s1) in (("lo", (0, a)), ("hi", (b, lo.x_N_D.shape[0]))):
            if s1 <= s0:
                continue
            key = (int(c), part)
            if key not in lo.cands:
                lo.cands[key] = Candidates(lo.x_N_D[s0:s1], x_sq_N=lo.x_sq_N[s0:s1])
            d2, _ = exact_knn(lo.cands[key], np.arange(s1 - s0), x_M_D[qpos], 1)
            np.minimum.at(out, qpos, d2[:, 0])
    return out


@shard_op
def pcg_other_label_within(state: ShardState, x_M_D: np.ndarray, labels_M: np.ndarray, tau_sq: float
                           ) -> np.ndarray:
    """Per query, the canonical squared distance to this shard's nearest row of another label
    if it is below ``tau_sq``, else inf (a range search on the shard's exact index)."""
    lims, d2, pos = _pc(state).index.range_search(x_M_D, tau_sq, strict=True)
    q = np.repeat(np.arange(x_M_D.shape[0]), np.diff(lims))
    other = clustering.labels(state)[pos] != np.asarray(labels_M)[q]
    out = np.full(x_M_D.shape[0], np.inf)
    np.minimum.at(out, q[other], d2[other])
    return out


def _quantile_sq(r_sq: np.ndarray, purity: float) -> float:
    """δ² of the rule: the ``ceil(purity·n)``-th largest value."""
    r = np.sort(r_sq)[::-1]
    m = max(1, math.ceil(purity * r.shape[0]))
    return float(r[m - 1])


def _sample(shards: Shards, n: int, sample: int, seed: int, round: int, normalize: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    """About ``sample`` rows drawn by keyed uniform noise: (normalised x, pseudo-labels)."""
    parts = shards.call(_OP + "pcg_sample", seed, round, float(sample) / n, normalize)
    return np.concatenate([p.x_M_D for p in parts]), np.concatenate([p.labels_M for p in parts])


def _other_label_sq(shards: Shards, chunks: Any, op: str, *args: Any) -> np.ndarray:
    """Per row of ``chunks()`` ((x, labels) pairs), the minimum over shards of ``op``."""
    parts = [np.min(np.stack(shards.call(_OP + op, x, lab, *args)), axis=0) for x, lab in chunks()]
    return np.concatenate(parts) if parts else np.empty(0)


def _rule_rows(shards: Shards, n: int, sample: int | None, seed: int, round: int, normalize: bool,
               chunk_rows: int) -> tuple[Any, int]:
    """The rows the purity rule is applied to — every row (in :func:`near_chunks` order:
    the rule takes a quantile, which no order changes; needs the shards' indexes), or the
    keyed sample — as a function giving their (x, labels) chunks, and their number."""
    if sample is None or sample >= n:
        sizes = [int(v) for v in shards.call(_PC + "pc_size")]
        return (lambda: ((x, lab) for _, x, lab in near_chunks(shards, sizes, chunk_rows))), n
    x, lab = _sample(shards, n, sample, seed, round, normalize)
    return (lambda: ((x[s:s + chunk_rows], lab[s:s + chunk_rows]) for s in range(0, x.shape[0], chunk_rows))), \
        int(x.shape[0])


def _first_radius(shards: Shards, n: int, t: int, m: int, seed: int, round: int, normalize: bool,
                  chunk_rows: int) -> float:
    """A radius τ likely above the rule's quantile: from the exact distances of a keyed
    probe of :data:`_PROBE` rows (brute-force 1-NN per label)."""
    x, lab = _sample(shards, n, min(n, _PROBE), seed + 1, round, normalize)
    probe = _other_label_sq(shards, lambda: ((x[s:s + chunk_rows], lab[s:s + chunk_rows])
                                             for s in range(0, x.shape[0], chunk_rows)), "pcg_other_label", normalize)
    probe = probe[np.isfinite(probe)]
    return float(np.quantile(probe, min(1.0, 2.0 * t / m + 0.01))) * 1.2 if probe.size else 0.0


#: Rows of the probe that suggests the first radius of the purity rule's range searches.
_PROBE = 1000


def purity_delta(shards: Shards, *, n_classes: int, purity: float, normalize: bool, chunk_rows: int, seed: int,
                 round: int, kmeans_iters: int, sample: int | None = None) -> float:
    """The largest δ at which at least ``purity`` of the δ-balls are pure; with ``sample``,
    of the balls around about ``sample`` keyed-random rows (approximate).

    A probe (brute-force 1-NN per label) suggests a radius τ above the quantile; one range
    search at τ per rule row (the shards' exact cell-pruned indexes, built by ``pcg_index``)
    gives every distance below τ exactly. When at least the ``m - ceil(purity·m) + 1``
    smallest of the ``m`` rows' distances are among them, the quantile is exact; otherwise
    τ grows and the pass repeats."""
    n = shards.n_rows()
    kmeans(shards, int(min(n_classes, n)), seed=seed, round=round, max_iters=kmeans_iters)
    try:
        chunks, m = _rule_rows(shards, n, sample, seed, round, normalize, chunk_rows)
        if m == 0:
            return float("inf")
        # after k-means (its own state); sized for the m rule rows' range searches
        shards.call(_OP + "pcg_index", "exact", {"queries": m} if m < n else {}, normalize, int(seed), True)
        t = m - max(1, math.ceil(purity * m)) + 1  # the t-th smallest squared distance is δ²
        tau = _first_radius(shards, n, t, m, seed, round, normalize, chunk_rows)
        while 0.0 < tau < 4.0 + 1e-9:  # unit vectors: every squared distance is <= 4
            r_sq = _other_label_sq(shards, chunks, "pcg_other_label_within", tau)
            if np.count_nonzero(r_sq < tau) >= t:
                return float(math.sqrt(np.partition(r_sq, t - 1)[t - 1]))
            tau *= 4.0
        # Not normalised, or one label: every row's distance, brute force.
        q = _quantile_sq(_other_label_sq(shards, chunks, "pcg_other_label", normalize), purity)
        return float(math.sqrt(q)) if np.isfinite(q) else float("inf")
    finally:
        shards.call(_OP + "pcg_drop_purity")


@shard_op
def pcg_drop_purity(state: ShardState) -> None:
    if "probcover" in state.strategy_state:
        _pc(state).by_label = None


# -- the graph ----------------------------------------------------------------------------------

@shard_op
def pcg_index(state: ShardState, mode: str, params: dict[str, Any], normalize: bool, seed: int,
              reuse: bool = False) -> int:
    """Index this shard's normalised rows (ids = local positions); ``reuse``: keep an index of
    the same mode built before (the purity rule's)."""
    from alscale.index.neighbours import make_index

    pc = _pc(state, normalize)
    if not (reuse and pc.index is not None and pc.index.mode == mode):
        pc.index = None
        pc.index = make_index(mode, pc.x_N_D, np.arange(pc.x_N_D.shape[0]), params=params, seed=seed)
    pc.src, pc.dst, pc.order = [], [], None
    return int(pc.x_N_D.shape[0])


@shard_op
def pcg_chunk(state: ShardState, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of this shard in the order of its index's cells or lists
    (:func:`near_chunks`), as a ``probcover.Chunk`` (labels empty before the k-means)."""
    from alscale.strategies.probcover import Chunk

    pc = _pc(state)
    if pc.order is None:
        order = getattr(pc.index, "row_order", None)
        pc.order = order() if order is not None else np.arange(pc.x_N_D.shape[0])
    pos = pc.order[start:stop]
    labels = clustering.labels(state, required=False)
    return Chunk(state.row_ids_N[pos], pc.x_N_D[pos], labels[pos] if labels is not None else np.empty(0, np.int64))


def near_chunks(shards: Shards, sizes: list[int], chunk_rows: int):
    """Every row of the pool (built indexes needed), shard by shard, in chunks of rows near
    each other (each shard's rows grouped by its index's cells or lists): a chunk's queries
    then visit few cells, or scan the same lists one after another — the same answers per
    row as any order, read from cache instead of memory, with fewer per-cell passes."""
    for s, n in enumerate(sizes):
        for start in range(0, n, chunk_rows):
            args = [(start, min(n, start + chunk_rows)) if t == s else (0, 0) for t in range(len(sizes))]
            yield shards.call_each(_OP + "pcg_chunk", args)[s]


@shard_op
def pcg_edges(state: ShardState, ids_M: np.ndarray, x_M_D: np.ndarray, delta_sq: float) -> int:
    """Edges from this shard's rows to the chunk's rows within δ (strict); returns their number."""
    pc = _pc(state)
    lims, _, pos = pc.index.range_search(x_M_D, delta_sq, strict=True)
    q = np.repeat(np.arange(x_M_D.shape[0]), np.diff(lims))
    pc.src.append(pos.astype(np.int64))
    pc.dst.append(np.asarray(ids_M, np.int64)[q])
    return int(pos.shape[0])


@shard_op
def pcg_finish(state: ShardState) -> int:
    """Freeze the edges: CSR by source row, and (target id -> source rows) for the updates."""
    pc = _pc(state)
    pc.index, pc.order = None, None
    return pc.finish(state.row_ids_N.shape[0])


@shard_op(mutates=False)
def pcg_graph(state: ShardState) -> tuple[np.ndarray, np.ndarray]:
    """The edges as (source row ids, target row ids), sorted (for tests and benchmarks)."""
    g = _pc(state).graph
    return np.repeat(state.row_ids_N, np.diff(g.csr_ptr_N1)), g.csr_dst_E


@shard_op(mutates=False)
def pcg_labeled_balls(state: ShardState) -> np.ndarray:
    return _pc(state).graph.balls(np.flatnonzero(state.labeled_N))


class Offer(NamedTuple):
    """A row a shard offers to the greedy: its degree, id and ball (target ids)."""

    degree: int
    row_id: int
    ball_ids: np.ndarray


class Offers(NamedTuple):
    """A shard's ``offers`` (best first) and the ``(degree, row_id)`` of its next row, a bound
    on every row it did not offer (``(-1, -1)``: none)."""

    offers: list[Offer]
    bound: tuple[int, int]


@shard_op
def pcg_offer(state: ShardState, new_ids: np.ndarray, picked_ids: np.ndarray, m: int) -> Offers:
    """Cover ``new_ids`` (each newly covered: lower the degree of every row with an edge to
    it), mark ``picked_ids`` picked; offer this shard's best ``m`` rows by (degree desc, id)
    with their balls, and the (degree, id) of the next one ((-1, -1) when none)."""
    pc = _pc(state)
    pc.graph.cover(new_ids)
    if np.asarray(picked_ids).size:
        pc.picked_N |= np.isin(state.row_ids_N, picked_ids)
    cand = np.flatnonzero(state.candidates_N & ~pc.picked_N)
    deg = pc.graph.degree_N[cand]
    take = min(m + 1, cand.shape[0])
    if take == 0:
        return Offers([], (-1, -1))
    if take < cand.shape[0]:
        kth = np.partition(-deg, take - 1)[take - 1]
        sel = np.flatnonzero(-deg <= kth)
        cand, deg = cand[sel], deg[sel]
    o = np.lexsort((state.row_ids_N[cand], -deg))[:take]
    offers = [Offer(int(deg[i]), int(state.row_ids_N[cand[i]]), pc.graph.ball(int(cand[i]))) for i in o[:m]]
    bound = (int(deg[o[m]]), int(state.row_ids_N[cand[o[m]]])) if o.shape[0] > m else (-1, -1)
    return Offers(offers, bound)


def greedy(shards: Shards, budget: int, offer: int) -> tuple[list[int], list[float]]:
    """Greedy max coverage (module doc), exactly the pick-at-a-time order."""
    labeled_cov = np.unique(np.concatenate(shards.call(_OP + "pcg_labeled_balls")))
    covered: set[int] = set(labeled_cov.tolist())
    new_ids, picked = labeled_cov, np.empty(0, np.int64)
    ids_B: list[int] = []
    scores_B: list[float] = []
    while len(ids_B) < budget:
        res = shards.call(_OP + "pcg_offer", new_ids, picked, int(offer))
        offers = {o.row_id: o.ball_ids for r in res for o in r.offers}
        bounds = [r.bound for r in res]
        if not offers:
            break
        bound = max(bounds, key=lambda b: (b[0], -b[1]))
        gains = {row: int(sum(1 for t in ball.tolist() if t not in covered)) for row, ball in offers.items()}
        new_list: list[int] = []
        picked_list: list[int] = []
        stop = False
        while len(ids_B) < budget and gains:
            row = max(gains, key=lambda r: (gains[r], -r))
            g = gains[row]
            if bound[1] >= 0 and (g, -row) < (bound[0], -bound[1]):
                break  # a row not offered may be better: sync
            if g <= 0:
                stop = True
                break
            ids_B.append(row)
            scores_B.append(float(g))
            progress.advance()
            fresh = [t for t in offers[row].tolist() if t not in covered]
            covered.update(fresh)
            new_list += fresh
            picked_list.append(row)
            del gains[row]
            fresh_set = set(fresh)
            for r in gains:
                gains[r] -= sum(1 for t in offers[r].tolist() if t in fresh_set)
        if stop:
            break
        new_ids, picked = np.asarray(new_list, np.int64), np.asarray(picked_list, np.int64)
    shards.call(_OP + "pcg_mark", np.asarray(ids_B, np.int64))
    return ids_B, scores_B


@shard_op
def pcg_mark(state: ShardState, picked_ids: np.ndarray) -> None:
    """Record the picks (for the random fill), as ``probcover.pc_random`` expects them."""
    _pc(state).picked_N = np.isin(state.row_ids_N, picked_ids)


# -- the strategy -------------------------------------------------------------------------------

def build_graph(shards: Shards, delta: float, *, mode: str, params: dict[str, Any], normalize: bool,
                chunk_rows: int, max_edges: int, seed: int) -> int:
    """The δ-ball graph on every shard; returns the number of edges."""
    shards.call(_OP + "pcg_index", mode, dict(params), normalize, int(seed), True)
    sizes = [int(v) for v in shards.call(_PC + "pc_size")]
    edges = 0
    for ids, x, _ in near_chunks(shards, sizes, chunk_rows):
        edges += sum(shards.call(_OP + "pcg_edges", ids, x, float(delta) ** 2))
        if edges > max_edges:
            shards.call(_OP + "pcg_finish")
            raise AlscaleError(f"probcover: δ = {delta:.4g} gives more than {max_edges:,} edges "
                               f"({sum(sizes):,} rows); set a smaller strategy.options.delta or raise max_edges")
    return int(sum(shards.call(_OP + "pcg_finish")))


#: The δ-graph's IVF-Flat index unless ``index_params`` names ``nlist`` or ``list_rows``:
#: about 128 rows per list over an HNSW coarse quantizer, 8 lists probed
#: (:mod:`alscale.index.faiss_ann`) — a query's work independent of N, where ``4·√N`` flat
#: lists cost ``√N`` per query (N^1.6 for the graph at 100k -> 1M rows; BENCHMARKS.md).
GRAPH_IVF = {"list_rows": 128, "nprobe": 8}


def graph_params(mode: str, index_params: dict[str, Any] | None) -> dict[str, Any]:
    """The neighbour-index parameters of the δ-graph: ``index_params`` over the defaults."""
    params = dict(index_params or {})
    if mode == "approx_ivf_flat" and "nlist" not in params and "list_rows" not in params:
        params = {**GRAPH_IVF, **params}
    return params


def select(shards: Shards, budget: int, options: dict[str, Any], seed: int, round: int
           ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """ProbCover's picks and scores (budget already capped), and what was done (for logs)."""
    normalize, chunk = bool(options["normalize"]), int(options["chunk_rows"])
    mode = options["index"]
    delta = options["delta"]
    params = graph_params(mode, options["index_params"])
    if delta == "auto":
        delta = purity_delta(shards, n_classes=options["n_classes"], purity=options["purity"], normalize=normalize,
                             chunk_rows=chunk, seed=seed, round=round, kmeans_iters=options["kmeans_iters"],
                             sample=options["purity_sample"])
    edges = build_graph(shards, float(delta), mode=mode, params=params, normalize=normalize, chunk_rows=chunk,
                        max_edges=options["max_edges"], seed=seed)
    ids_B, scores_B = greedy(shards, budget, int(options["offer"]))
    if len(ids_B) < budget:  # nothing left to cover: the reference fills the budget at random
        from alscale.strategies.probcover import random_fill

        ids_B += random_fill(shards, seed, round, budget - len(ids_B))
        scores_B += [0.0] * (len(ids_B) - len(scores_B))
    info = {"delta": float(delta), "edges": edges, "index": mode, "exact": is_exact(mode) and
            options["purity_sample"] is None}
    return np.asarray(ids_B, np.int64), np.asarray(scores_B, np.float64), info
