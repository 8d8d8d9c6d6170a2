"""Neighbour search behind one small interface: exact top-k / range search, and FAISS
approximate indexes, each mode named so that its name says whether it is exact.

Modes (:data:`MODES`):

- ``exact`` — a fast float32 pass (on the CPU from 4,096 rows: over the Voronoi cells
  that can hold a result, :mod:`alscale.index.neighbours_cells`; otherwise brute force —
  FAISS ``knn`` / flat ``range_search`` when faiss is installed, torch on a GPU, else
  blocked numpy GEMMs with a partial sort) finds per query every row whose approximate
  squared distance is within twice the
  rigorous error bound of :func:`alscale.index.base.sq_dist_error_bound` of the k-th
  smallest (or of the radius); those pairs alone are compared with the canonical float64
  distance of :mod:`alscale.index.exact`, ties to the lower ``row_id``. The answer is
  therefore a function of the vectors alone: the same for every backend, thread count,
  shard count and machine, and equal to brute force in float64 (the same certified-bound
  idea as exact k-center, DESIGN §3).
- ``approx_ivf_flat``, ``approx_ivf_pq``, ``approx_hnsw`` — FAISS ``IndexIVFFlat``,
  ``IndexIVFPQ``, ``IndexHNSWFlat`` (:mod:`alscale.index.faiss_ann`; Jégou et al., TPAMI
  2011; Malkov & Yashunin, TPAMI 2018). Their candidates are re-ranked with the canonical
  distance, so a result is always a true neighbour at its true distance: what the index
  approximates is *which* rows are found (recall), never a distance.

Results: ``search`` returns ``(d2_Q_k float64, ids_Q_k int64)`` sorted by ``(d2, id)``,
padded with ``(inf, -1)``; ``range_search`` returns ``(lims_Q1, d2_P, ids_P)`` in CSR form
(the pairs of query ``q`` are ``lims[q]:lims[q+1]``), each query's pairs sorted by
``(d2, id)``. Per-shard results merge exactly with :func:`merge_knn` / :func:`merge_range`.

GPU: chosen at run time — FAISS GPU where the installed wheel has code for the device
(:func:`alscale.index.faiss_backend.faiss_gpu_usable`), torch on CUDA otherwise (the PyPI
``faiss-gpu-cu12`` wheel has no Hopper code); the CPU is the fallback and the reference.

Only ``alscale/index/faiss_*`` imports faiss; this module needs numpy alone.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.index.base import norm_upper_bound, sq_dist_error_bound
from alscale.index.exact import sq_dist_rows

__all__ = [
    "MODES",
    "ExactIndex",
    "NeighbourIndex",
    "check_mode",
    "exact_knn",
    "exact_range",
    "is_exact",
    "make_index",
    "merge_knn",
    "merge_range",
]

logger = logging.getLogger(__name__)

#: Mode name -> whether it is exact.
MODES: dict[str, bool] = {"exact": True, "approx_ivf_flat": False, "approx_ivf_pq": False, "approx_hnsw": False}

_ROWS = 16384  # database rows per numpy block
_PAIRS = 1 << 22  # canonical pairs per evaluation chunk


def check_mode(mode: Any, where: str = "index") -> str:
    """``mode`` if it names a neighbour-search mode; otherwise one clear error."""
    if not isinstance(mode, str) or mode not in MODES:
        raise AlscaleError(f"{where} must be one of {', '.join(MODES)} (approximate modes say so in their "
                           f"name); got {short_repr(mode)}")
    return mode


def is_exact(mode: str) -> bool:
    return MODES[check_mode(mode)]


@runtime_checkable
class NeighbourIndex(Protocol):
    """Rows ``x`` with ids, searched by queries (module doc for the result layout)."""

    mode: str
    exact: bool

    def __len__(self) -> int: ...

    def search(self, q_Q_D: np.ndarray, k: int, *, exclude_ids_Q: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]: ...

    def range_search(self, q_Q_D: np.ndarray, r2: float, *, strict: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


# -- candidate passes (float32, fast; only bounds are taken from them) ---------------------

def _faiss():
    try:
        import alscale.index.faiss_ann as faiss_ann

        faiss_ann.import_faiss()
        return faiss_ann
    except ImportError:
        return None


def _numpy_topk(q: np.ndarray, x: np.ndarray, x_sq: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-``kk`` (smallest) per query: (values [Q, kk] ascending, positions)."""
    from alscale.index.blas import threads_for

    m = q.shape[0]
    q_sq = np.einsum("qd,qd->q", q, q)
    best_v = np.full((m, 0), np.inf, np.float32)
    best_i = np.empty((m, 0), np.int64)
    for r0 in range(0, x.shape[0], _ROWS):
        xb = x[r0:r0 + _ROWS]
        with threads_for(m * xb.shape[0] * x.shape[1]):
            approx = q_sq[:, None] + x_sq[None, r0:r0 + _ROWS] - 2.0 * (q @ xb.T)
        v = np.concatenate([best_v, approx], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(r0, r0 + xb.shape[0]), approx.shape)], axis=1)
        t = min(kk, v.shape[1])
        part = np.argpartition(v, t - 1, axis=1)[:, :t] if t < v.shape[1] else np.argsort(v, axis=1)
        best_v = np.take_along_axis(v, part, axis=1)
        best_i = np.take_along_axis(i, part, axis=1)
    o = np.argsort(best_v, axis=1, kind="stable")
    return np.take_along_axis(best_v, o, axis=1), np.take_along_axis(best_i, o, axis=1)


def _numpy_range(q: np.ndarray, x: np.ndarray, x_sq: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (query, position) with approximate squared distance <= ``limit``."""
    from alscale.index.blas import threads_for

    q_sq = np.einsum("qd,qd->q", q, q)
    qi_all, xi_all = [], []
    rows = max(256, min(_ROWS, _PAIRS // max(1, q.shape[0])))
    for r0 in range(0, x.shape[0], rows):
        xb = x[r0:r0 + rows]
        with threads_for(q.shape[0] * xb.shape[0] * x.shape[1]):
            approx = q_sq[:, None] + x_sq[None, r0:r0 + rows] - 2.0 * (q @ xb.T)
        qi, xi = np.nonzero(approx <= limit)
        qi_all.append(qi)
        xi_all.append(xi + r0)
    if not qi_all:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(qi_all).astype(np.int64), np.concatenate(xi_all).astype(np.int64)


class Candidates:
    """The float32 candidate pass over fixed rows ``x``: FAISS flat (CPU or GPU), torch on
    CUDA, or numpy — whichever is available, in that order (``backend`` forces one;
    ``torch`` on the CPU runs the GPU path's code where no GPU is, for tests)."""

    def __init__(self, x_N_D: np.ndarray, device: str | None = None, backend: str = "auto",
                 x_sq_N: np.ndarray | None = None) -> None:
        self.x = np.ascontiguousarray(x_N_D, dtype=np.float32)
        self.x_sq = np.einsum("nd,nd->n", self.x, self.x) if x_sq_N is None else x_sq_N
        self.name = "numpy"
        self._impl: Any = None
        want_gpu = device is not None and device.startswith("cuda")
        fa = _faiss() if backend in ("auto", "faiss") else None
        if backend == "faiss" and fa is None:
            raise AlscaleError("neighbour backend faiss needs faiss; pip install 'alscale[cpu]'")
        if fa is not None and (not want_gpu or fa.gpu_ok(device)):
            self._impl = fa.FlatCandidates(self.x, device if want_gpu else "cpu")
            self.name = f"faiss-{'gpu' if want_gpu else 'cpu'}"
        elif (want_gpu and backend == "auto") or backend == "torch":
            from alscale.index.neighbours_torch import TorchCandidates

            self._impl = TorchCandidates(self.x, device or "cpu")  # the GPU path, also runnable on the CPU
            self.name = f"torch-{'cuda' if want_gpu else 'cpu'}"

    def topk(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        if self._impl is not None:
            return self._impl.topk(q, kk)
        return _numpy_topk(q, self.x, self.x_sq, kk)

    def range(self, q: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
        if self._impl is not None:
            return self._impl.range(q, limit)
        return _numpy_range(q, self.x, self.x_sq, limit)


def _slack(q: np.ndarray, x_sq: np.ndarray, dim: int) -> float:
    q_norm = norm_upper_bound(float(np.einsum("qd,qd->q", q, q).max(initial=0.0)), dim)
    x_norm = norm_upper_bound(float(x_sq.max(initial=0.0)), dim)
    return 2.0 * sq_dist_error_bound(x_norm, q_norm, dim)


def _rank_pairs(qi: np.ndarray, d2: np.ndarray, ids: np.ndarray, m: int, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` pairs per query by ``(d2, id)``, as padded ``[m, k]`` arrays."""
    out_d = np.full((m, k), np.inf)
    out_i = np.full((m, k), -1, dtype=np.int64)
    if qi.size == 0:
        return out_d, out_i
    o = np.lexsort((ids, d2, qi))
    qi, d2, ids = qi[o], d2[o], ids[o]
    starts = np.searchsorted(qi, np.arange(m))
    rank = np.arange(qi.shape[0]) - starts[qi]
    keep = rank < k
    out_d[qi[keep], rank[keep]] = d2[keep]
    out_i[qi[keep], rank[keep]] = ids[keep]
    return out_d, out_i


def _canonical(q: np.ndarray, x: np.ndarray, qi: np.ndarray, xi: np.ndarray) -> np.ndarray:
    out = np.empty(qi.shape[0], dtype=np.float64)
    step = max(1, _PAIRS // max(1, q.shape[1]))
    for s0 in range(0, qi.shape[0], step):
        out[s0:s0 + step] = sq_dist_rows(q[qi[s0:s0 + step]], x[xi[s0:s0 + step]])
    return out


def exact_knn(cands: Candidates, ids_N: np.ndarray, q_Q_D: np.ndarray, k: int,
              exclude_ids_Q: np.ndarray | None = None, cells: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows per query (canonical float64, ties to the lower id), excluding
    per query the row whose id is ``exclude_ids_Q[q]`` (e.g. the query itself; -1: none);
    ``cells`` (a :class:`alscale.index.neighbours_cells.Cells` of the same rows) prunes the
    candidate pass to the Voronoi cells that can hold a result (same answer)."""
    x = cands.x
    q = np.ascontiguousarray(q_Q_D, dtype=np.float32)
    m, n = q.shape[0], x.shape[0]
    if m == 0 or n == 0 or k <= 0:
        return np.full((m, max(k, 0)), np.inf), np.full((m, max(k, 0)), -1, np.int64)
    slack = _slack(q, cands.x_sq, x.shape[1])
    excl = None if exclude_ids_Q is None else np.asarray(exclude_ids_Q, np.int64)
    if cells is not None and k + (excl is not None) < n:
        # the (k+1)-th nearest of all rows bounds the k-th nearest of the others from above
        qi, xi = cells.knn_candidates(q, k + (excl is not None), slack)
    else:
        qi, xi = _brute_knn_pairs(cands, ids_N, q, k, slack, excl)
    d2, ids = _canonical(q, x, qi, xi), ids_N[xi]
    if excl is not None:
        keep = ids != excl[qi]
        qi, d2, ids = qi[keep], d2[keep], ids[keep]
    return _rank_pairs(qi, d2, ids, m, k)


def _brute_knn_pairs(cands: Candidates, ids_N: np.ndarray, q: np.ndarray, k: int, slack: float,
                     excl: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(query, position) pairs within ``slack`` of each query's k-th approximate distance
    (the query's excluded row left out), from the brute-force float32 pass."""
    m, n = q.shape[0], cands.x.shape[0]
    todo = np.arange(m)
    kk = min(n, k + max(8, k) + (excl is not None))
    qi_parts, xi_parts = [], []
    while todo.size:
        v, pos = cands.topk(q[todo], kk)
        v = v.astype(np.float64)
        if excl is not None:
            v[ids_N[np.maximum(pos, 0)] == excl[todo][:, None]] = np.inf
        v[pos < 0] = np.inf
        vs = np.sort(v, axis=1)
        kth = vs[:, min(k, kk) - 1]
        limit = kth + slack
        # Complete when every row not returned is provably beyond the limit.
        done = np.full(todo.shape[0], kk >= n) | (v.max(axis=1, where=np.isfinite(v), initial=-np.inf) > limit)
        r, c = np.nonzero(done[:, None] & (v <= limit[:, None]))
        qi_parts.append(todo[r])
        xi_parts.append(pos[r, c])
        todo = todo[~done]
        kk = min(n, kk * 4)
    return np.concatenate(qi_parts), np.concatenate(xi_parts)


def _csr(qi: np.ndarray, d2: np.ndarray, ids: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = np.lexsort((ids, d2, qi))
    lims = np.concatenate([[0], np.cumsum(np.bincount(qi, minlength=m))]).astype(np.int64)
    return lims, d2[o], ids[o]


def exact_range(cands: Candidates, ids_N: np.ndarray, q_Q_D: np.ndarray, r2: float, strict: bool = True,
                cells: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row with canonical ``‖q − x‖² < r2`` (``<=`` when not ``strict``), per query;
    ``cells`` (a :class:`alscale.index.neighbours_cells.CellRange` of the same rows) prunes
    the candidate pass to the Voronoi cells that can hold a result (same answer)."""
    x = cands.x
    q = np.ascontiguousarray(q_Q_D, dtype=np.float32)
    m = q.shape[0]
    if m == 0 or x.shape[0] == 0:
        return np.zeros(m + 1, np.int64), np.empty(0), np.empty(0, np.int64)
    limit = float(r2) + _slack(q, cands.x_sq, x.shape[1])
    if cells is not None:
        qi, xi = cells.range_candidates(q, limit, float(np.sqrt(max(r2, 0.0))))
    else:
        qi, xi = cands.range(q, limit)
    d2 = _canonical(q, x, qi, xi)
    keep = d2 < r2 if strict else d2 <= r2
    return _csr(qi[keep], d2[keep], ids_N[xi[keep]], m)


class ExactIndex:
    """Exact neighbours of rows ``x_N_D`` (ids ``ids_N``); see the module doc.

    On the CPU, from 4,096 rows on, searches prune by Voronoi cells
    (:mod:`alscale.index.neighbours_cells`): range search always; k-NN from
    :data:`CELL_KNN_QUERIES` queries in a call (fewer are cheaper by brute force than the
    cells' assignment pass), with about ``√(4·Q)`` cells for the first such call's ``Q``
    queries (``params['queries']`` overrides ``Q``, e.g. the total a caller will send in
    batches) — and no longer once the cells prune less than half of the pairs (isotropic
    data in many dimensions). Every path gives the same answer."""

    mode = "exact"
    exact = True

    def __init__(self, x_N_D: np.ndarray, ids_N: np.ndarray, *, device: str | None = None,
                 backend: str = "auto", cells: bool | None = None, seed: int = 0,
                 queries: int | None = None) -> None:
        self.ids = np.asarray(ids_N, dtype=np.int64)
        self._cands = Candidates(x_N_D, device, backend)
        self._forced = cells is not None
        self._use_cells = (len(self) >= 4096 and self._cands.name.startswith(("numpy", "faiss-cpu"))) \
            if cells is None else bool(cells)
        self._cells: Any = None
        self._seed = seed
        self._queries = queries

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        return f"ExactIndex(n={len(self)}, candidates={self._cands.name})"

    @property
    def x(self) -> np.ndarray:
        return self._cands.x

    def cells(self, queries: int | None = None) -> Any:
        """The Voronoi cells (built on first use, sized for ``queries`` k-NN queries, or for
        range search when None: ``√n`` cells, fewer when ``params['queries']`` says few
        queries will come)."""
        if self._cells is None:
            from alscale.index.neighbours_cells import Cells, default_nlist

            n = len(self)
            nlist = default_nlist(n, queries) if queries is not None else \
                min(default_nlist(n), default_nlist(n, self._queries or n))
            self._cells = Cells(self._cands.x, nlist=nlist, seed=self._seed)
        return self._cells

    def _knn_cells(self, n_queries: int) -> Any:
        if not self._use_cells:
            return None
        if self._forced:
            return self.cells(max(n_queries, self._queries or 0))
        if self._cells is None:
            if max(n_queries, self._queries or 0) < CELL_KNN_QUERIES:
                return None
            return self.cells(max(n_queries, self._queries or 0))
        if self._cells.scan_budget > 8 * len(self) and self._cells.scan_fraction() > 0.5:
            return None  # the cells do not prune this data
        return self._cells

    def row_order(self) -> np.ndarray:
        """Row positions grouped by Voronoi cell (the cells range search uses; identity
        without cells): queries sent in this order visit few cells per batch."""
        return self.cells().order if self._use_cells else np.arange(len(self))

    def search(self, q_Q_D: np.ndarray, k: int, *, exclude_ids_Q: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        cells = self._knn_cells(int(np.shape(q_Q_D)[0]))
        return exact_knn(self._cands, self.ids, q_Q_D, int(k), exclude_ids_Q, cells)

    def range_search(self, q_Q_D: np.ndarray, r2: float, *, strict: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cells = self.cells() if self._use_cells else None
        return exact_range(self._cands, self.ids, q_Q_D, float(r2), strict, cells)


#: k-NN calls with at least this many queries use the Voronoi cells (:class:`ExactIndex`).
CELL_KNN_QUERIES = 256


def make_index(mode: str, x_N_D: np.ndarray, ids_N: np.ndarray, *, params: dict[str, Any] | None = None,
               device: str | None = None, seed: int = 0) -> NeighbourIndex:
    """A neighbour index of ``mode`` over rows ``x_N_D`` with ids ``ids_N``.

    ``params`` (approximate modes): ``nlist``, ``nprobe`` (IVF), ``pq_m``, ``pq_bits``
    (IVF-PQ), ``hnsw_m``, ``ef_construction``, ``ef_search`` (HNSW), ``train_rows``;
    ``list_rows`` (IVF-Flat over an HNSW quantizer, lists of about that many rows) and
    ``train_iters``; defaults in :mod:`alscale.index.faiss_ann`. ``exact`` takes ``backend``
    (``auto``/``numpy``/``faiss``/``torch``) for its candidate pass, ``cells``
    (``True``/``False``; default: on the CPU from 4,096 rows) for Voronoi-cell pruning and
    ``queries`` (the k-NN queries a caller will send, to size the cells); see
    :class:`ExactIndex`.
    """
    check_mode(mode)
    x = np.ascontiguousarray(x_N_D, dtype=np.float32)
    ids = np.asarray(ids_N, dtype=np.int64)
    if x.ndim != 2 or ids.shape != (x.shape[0],):
        raise AlscaleError(f"make_index needs x [N, D] and ids [N]; got {x.shape} and {ids.shape}")
    params = dict(params or {})
    if mode == "exact":
        return ExactIndex(x, ids, device=device, backend=str(params.get("backend", "auto")),
                          cells=params.get("cells"), seed=seed, queries=params.get("queries"))
    fa = _faiss()
    if fa is None:
        raise AlscaleError(f"neighbour mode {mode} needs faiss; pip install 'alscale[cpu]' (faiss-cpu) or use "
                           "mode exact")
    return fa.FaissAnnIndex(mode, x, ids, params=params, device=device, seed=seed)


# -- exact merges of per-shard results ------------------------------------------------------

def merge_knn(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Global top-``k`` per query from per-shard top-``k`` lists, by ``(d2, id)``: exact."""
    if not parts:
        raise ValueError("merge_knn needs at least one part")
    d = np.concatenate([np.asarray(p[0], np.float64) for p in parts], axis=1)
    i = np.concatenate([np.asarray(p[1], np.int64) for p in parts], axis=1)
    m = d.shape[0]
    qi = np.repeat(np.arange(m), d.shape[1])
    d, i = d.ravel(), i.ravel()
    valid = i >= 0
    return _rank_pairs(qi[valid], d[valid], i[valid], m, k)


def merge_range(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CSR range result from per-shard ones (each query's pairs sorted by ``(d2, id)``)."""
    m = parts[0][0].shape[0] - 1
    qi = np.concatenate([np.repeat(np.arange(m), np.diff(p[0])) for p in parts])
    d2 = np.concatenate([p[1] for p in parts])
    ids = np.concatenate([p[2] for p in parts])
    return _csr(qi, d2, ids, m)


#: From this many rows on, :func:`self_knn_sq` prunes by Voronoi cells; below, the float32
#: brute-force pass is cheaper (measured on a 10k-row k-means cluster of the 8-dimensional
#: synthetic pool: cells 0.50 s vs brute force 0.32 s; at 107k rows 16.6 s vs ~32 s).
SELF_KNN_CELLS = 32768


def self_knn_sq(x_N_D: np.ndarray, k: int, *, block: int = 8192) -> np.ndarray:
    """Squared distances from every row to its ``k`` nearest *other* rows, ascending ``[N, k]``
    — a screen, accurate to the float32 error bound (callers decide near-ties in float64,
    as TypiClust's typicality does): the float32 brute-force pass (FAISS ``knn`` when
    installed) below :data:`SELF_KNN_CELLS` rows, else the exact cell-pruned search
    (canonical values), queried by the rows themselves in blocks."""
    x = np.ascontiguousarray(x_N_D, dtype=np.float32)
    n = x.shape[0]
    if n < SELF_KNN_CELLS:
        return _self_knn_brute(x, k)
    ids = np.arange(n, dtype=np.int64)
    ix = ExactIndex(x, ids, queries=n, cells=True)
    out = np.empty((n, k), dtype=np.float64)
    for r0 in range(0, n, block):
        out[r0:r0 + block], _ = ix.search(x[r0:r0 + block], k, exclude_ids_Q=ids[r0:r0 + block])
    return out


def _self_knn_brute(x: np.ndarray, k: int) -> np.ndarray:
    n = x.shape[0]
    kk = min(n, k + 1)
    cands = Candidates(x)
    out = np.full((n, k), np.inf, dtype=np.float64)
    step = 4096
    for r0 in range(0, n, step):
        v, pos = cands.topk(x[r0:r0 + step], kk)
        own = pos == np.arange(r0, r0 + v.shape[0])[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), kk - 1)  # itself, else the farthest
        keep = np.ones_like(own)
        keep[np.arange(v.shape[0]), drop] = False
        out[r0:r0 + step, :kk - 1] = np.maximum(v[keep].reshape(v.shape[0], kk - 1), 0.0)
    return out
