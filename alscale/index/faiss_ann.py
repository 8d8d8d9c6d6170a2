"""FAISS for neighbour search: the flat candidate pass of exact search and the approximate
indexes (IVF-Flat, IVF-PQ, HNSW) of :mod:`alscale.index.neighbours`.

One of the two modules that import ``faiss`` (lazily). Approximate modes:

- ``approx_ivf_flat``: ``IndexIVFFlat`` (Jégou, Douze & Schmid, TPAMI 2011; inverted lists
  over a k-means coarse quantizer), ``nlist`` lists (default ``4·√N`` capped to keep
  training cheap), ``nprobe`` probed (default 8). With ``list_rows`` instead, about that
  many rows per list (``nlist = ⌈N / list_rows⌉``) over an HNSW coarse quantizer
  (``IndexIVFFlat(IndexHNSWFlat(d, 16), d, nlist)``, the IVF-HNSW of Baranchuk, Babenko &
  Malkov, ECCV 2018): a query's work (the quantizer's ``O(log nlist)`` graph search plus
  ``nprobe · list_rows`` rows) no longer grows with N, where the flat quantizer's
  ``nlist + nprobe · N / nlist`` is at best ``√N``. The centroids: ``train_iters`` (default
  4) Lloyd iterations, assigned by HNSW, from a seeded sample of ``8·nlist`` rows;
- ``approx_ivf_pq``: ``IndexIVFPQ``, product-quantised residuals (``pq_m`` sub-vectors of
  ``pq_bits`` bits) — a quarter or less of the memory, candidates re-ranked exactly;
- ``approx_hnsw``: ``IndexHNSWFlat`` (Malkov & Yashunin, TPAMI 2018), ``hnsw_m`` links,
  ``ef_search`` (default 64). CPU only (FAISS has no GPU HNSW).

Every candidate an approximate index returns is re-ranked with the canonical float64
distance (the module keeps the float32 rows), so an approximate answer has true distances
and only misses rows (recall < 1). Training draws ``train_rows`` rows with a fixed seed.

GPU: IVF indexes move to the device with ``index_cpu_to_gpu`` where the wheel has code for
it (:func:`gpu_ok`); range search stays on the CPU (FAISS has none on GPU, faiss#565).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Any

import numpy as np

from alscale.errors import AlscaleError

logger = logging.getLogger(__name__)

_GPU_RES: dict[str, Any] = {}


def import_faiss() -> Any:
    import faiss

    return faiss


def gpu_ok(device: str) -> bool:
    """Whether the installed faiss can search on ``device`` (``cuda`` / ``cuda:N``)."""
    from alscale.index.faiss_backend import faiss_gpu_usable

    return faiss_gpu_usable(int(device.partition(":")[2] or 0))


def _gpu_res(device: str) -> Any:
    if device not in _GPU_RES:
        _GPU_RES[device] = import_faiss().StandardGpuResources()
    return _GPU_RES[device]


class FlatCandidates:
    """Brute-force float32 passes with FAISS (``knn`` / ``knn_gpu``, flat ``range_search``)."""

    def __init__(self, x_N_D: np.ndarray, device: str = "cpu") -> None:
        self._faiss = import_faiss()
        self.x = x_N_D
        self.device = device
        self._flat: Any = None

    def topk(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        f = self._faiss
        if self.device.startswith("cuda"):
            dev = int(self.device.partition(":")[2] or 0)
            d, i = f.knn_gpu(_gpu_res(self.device), q, self.x, min(kk, 2048), device=dev)
        else:
            d, i = f.knn(q, self.x, kk)
        return d, i.astype(np.int64)

    def range(self, q: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
        if self._flat is None:
            self._flat = self._faiss.IndexFlatL2(self.x.shape[1])
            self._flat.add(self.x)
        # FAISS keeps distances strictly below the radius: the next float32 above the limit.
        radius = float(np.nextafter(np.float32(limit), np.float32(np.inf)))
        lims, _, pos = self._flat.range_search(q, radius)
        qi = np.repeat(np.arange(q.shape[0], dtype=np.int64), np.diff(lims.astype(np.int64)))
        return qi, pos.astype(np.int64)


def _default_nlist(n: int) -> int:
    return int(max(1, min(4096, round(4 * math.sqrt(max(n, 1))), n // 39 if n >= 39 else 1)))


def _ivf_hnsw(f: Any, x_N_D: np.ndarray, list_rows: int, iters: int, seed: int) -> Any:
    """An empty trained ``IndexIVFFlat`` of ``⌈N / list_rows⌉`` lists over an HNSW quantizer
    (module doc): centroids from ``iters`` Lloyd iterations on a seeded sample of
    ``8·nlist`` rows, each iteration assigning through an HNSW graph of the centroids (so
    training costs ``O(N log N)``, not the flat ``N·nlist``)."""
    n = x_N_D.shape[0]
    if list_rows < 1:
        raise AlscaleError(f"neighbour mode approx_ivf_flat: list_rows must be >= 1; got {list_rows}")
    nlist = max(1, -(-n // list_rows))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 16]))
    sample = x_N_D[np.sort(rng.choice(n, size=min(n, 8 * nlist), replace=False))]
    cent = np.ascontiguousarray(sample[np.sort(rng.choice(sample.shape[0], size=nlist, replace=False))])
    with _one_thread(f):  # FAISS inserts HNSW nodes in parallel, in no fixed order: one thread
        return _ivf_over_hnsw(f, sample, cent, iters, seed)


@contextmanager
def _one_thread(f: Any):
    threads = f.omp_get_max_threads()
    f.omp_set_num_threads(1)
    try:
        yield
    finally:
        f.omp_set_num_threads(threads)


def _ivf_over_hnsw(f: Any, sample: np.ndarray, cent: np.ndarray, iters: int, seed: int) -> Any:
    """The IVF index of :func:`_ivf_hnsw` from its sample and first centroids (the same
    graph, centroids and lists on every run: call it on one thread)."""
    nlist, d = cent.shape
    if iters > 0 and nlist > 1:
        cl = f.Clustering(d, nlist)
        cl.niter, cl.seed, cl.verbose = iters, int(seed), False
        cl.min_points_per_centroid, cl.max_points_per_centroid = 1, 8
        f.copy_array_to_vector(cent.ravel(), cl.centroids)  # start from the sampled rows
        assign = f.IndexHNSWFlat(d, 16)
        assign.hnsw.efSearch = 16
        cl.train(sample, assign)
        cent = f.vector_to_array(cl.centroids).reshape(nlist, d).astype(np.float32)
    quant = f.IndexHNSWFlat(d, 16)
    quant.hnsw.efConstruction = 40
    quant.add(cent)
    ix = f.IndexIVFFlat(quant, d, nlist)
    ix.is_trained = True  # the python wrapper keeps ``quant`` alive with the index
    return ix


class FaissAnnIndex:
    """An approximate FAISS index over rows ``x`` with ids (module doc)."""

    exact = False

    def __init__(self, mode: str, x_N_D: np.ndarray, ids_N: np.ndarray, *, params: dict[str, Any],
                 device: str | None = None, seed: int = 0) -> None:
        from alscale.index.exact import sq_dist_rows  # noqa: F401  (kept for re-ranking)

        f = import_faiss()
        self.mode = mode
        self.x = np.ascontiguousarray(x_N_D, dtype=np.float32)
        self.ids = np.asarray(ids_N, dtype=np.int64)
        n, d = self.x.shape
        known = {"nlist", "nprobe", "pq_m", "pq_bits", "hnsw_m", "ef_construction", "ef_search", "train_rows",
                 "rerank", "list_rows", "train_iters"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise AlscaleError(f"unknown option(s) {', '.join(unknown)} for neighbour mode {mode}; "
                               f"valid: {', '.join(sorted(known))}")
        self.params = dict(params)
        self.rerank = int(params.get("rerank", 2))  # candidates per wanted neighbour (IVF-PQ)
        if "list_rows" in params and mode != "approx_ivf_flat":
            raise AlscaleError(f"option list_rows is for neighbour mode approx_ivf_flat, not {mode}")
        # FAISS has no GPU HNSW: the IVF-HNSW variant (list_rows) stays on the CPU
        self._gpu = device is not None and device.startswith("cuda") and mode != "approx_hnsw" and \
            "list_rows" not in params and gpu_ok(device)
        self._hnsw_quantizer: Any = None  # the IVF-HNSW variant's coarse quantizer (list_rows)
        if n == 0:
            self._index = None
            return
        if mode == "approx_hnsw":
            ix = f.IndexHNSWFlat(d, int(params.get("hnsw_m", 32)))
            ix.hnsw.efConstruction = int(params.get("ef_construction", 40))
            ix.add(self.x)
            ix.hnsw.efSearch = int(params.get("ef_search", 64))
        elif "list_rows" in params:
            ix = _ivf_hnsw(f, self.x, int(params["list_rows"]), int(params.get("train_iters", 4)), seed)
            ix.add(self.x)
            ix.nprobe = int(params.get("nprobe", 8))
            self._hnsw_quantizer = f.downcast_index(ix.quantizer)
            self._hnsw_quantizer.hnsw.efSearch = max(16, ix.nprobe)
        else:
            nlist = int(params.get("nlist", _default_nlist(n)))
            nlist = max(1, min(nlist, n))
            quant = f.IndexFlatL2(d)
            if mode == "approx_ivf_flat":
                ix = f.IndexIVFFlat(quant, d, nlist)
            else:
                m = int(params.get("pq_m", max(1, d // 4)))
                if d % m:
                    raise AlscaleError(f"neighbour mode approx_ivf_pq: pq_m = {m} must divide the dimension {d}")
                bits = int(params.get("pq_bits", 8 if n >= 256 * 39 else 4))
                ix = f.IndexIVFPQ(quant, d, nlist, m, bits)
            ix.cp.seed = int(seed)
            train = int(params.get("train_rows", min(n, max(64 * nlist, 20000))))
            rows = np.random.default_rng(seed).choice(n, size=min(n, train), replace=False) if train < n else \
                np.arange(n)
            ix.train(self.x[np.sort(rows)])
            ix.add(self.x)
            ix.nprobe = int(params.get("nprobe", 8))
        self._cpu_index = ix
        self._index = f.index_cpu_to_gpu(_gpu_res(device), int(device.partition(":")[2] or 0), ix) \
            if self._gpu else ix

    def _range_by_list(self, q: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Range search on the IVF-HNSW index with the queries taken in the order of their
        nearest list (the same pairs as ``range_search``; consecutive queries scan the same
        lists, so the lists are read from cache instead of memory): (query, position) pairs."""
        ix = self._cpu_index
        dq, iq = self._hnsw_quantizer.search(q, ix.nprobe)
        o = np.argsort(iq[:, 0], kind="stable")
        lims, _, pos = ix.range_search_preassigned(q[o], radius, iq[o], dq[o])
        qi = o[np.repeat(np.arange(q.shape[0], dtype=np.int64), np.diff(lims.astype(np.int64)))]
        return qi.astype(np.int64), pos

    def row_order(self) -> np.ndarray:
        """Row positions grouped by inverted list (IVF; identity for HNSW): queries sent in
        this order scan the same lists one after another."""
        if self._index is None or self.mode == "approx_hnsw":
            return np.arange(len(self))
        f = import_faiss()
        inv = self._cpu_index.invlists
        parts = [f.rev_swig_ptr(inv.get_ids(j), inv.list_size(j)).copy() for j in range(self._cpu_index.nlist)]
        return np.concatenate(parts).astype(np.int64) if parts else np.arange(len(self))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        return f"FaissAnnIndex({self.mode}, n={len(self)}, params={self.params})"

    def _rerank(self, q: np.ndarray, qi: np.ndarray, pos: np.ndarray) -> np.ndarray:
        from alscale.index.neighbours import _canonical

        return _canonical(q, self.x, qi, pos)

    def search(self, q_Q_D: np.ndarray, k: int, *, exclude_ids_Q: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        from alscale.index.neighbours import _rank_pairs

        q = np.ascontiguousarray(q_Q_D, dtype=np.float32)
        m = q.shape[0]
        if self._index is None or m == 0:
            return np.full((m, k), np.inf), np.full((m, k), -1, np.int64)
        kk = min(len(self), (k + (exclude_ids_Q is not None)) * (self.rerank if self.mode == "approx_ivf_pq" else 1))
        _, pos = self._index.search(q, kk)
        qi, c = np.nonzero(pos >= 0)
        p = pos[qi, c].astype(np.int64)
        ids = self.ids[p]
        if exclude_ids_Q is not None:
            keep = ids != np.asarray(exclude_ids_Q, np.int64)[qi]
            qi, p, ids = qi[keep], p[keep], ids[keep]
        return _rank_pairs(qi, self._rerank(q, qi, p), ids, m, k)

    def range_search(self, q_Q_D: np.ndarray, r2: float, *, strict: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from alscale.index.neighbours import _csr

        q = np.ascontiguousarray(q_Q_D, dtype=np.float32)
        m = q.shape[0]
        if self._index is None or m == 0:
            return np.zeros(m + 1, np.int64), np.empty(0), np.empty(0, np.int64)
        # Approximate distances may be a little off (PQ: much more): a wider radius, then exact.
        widen = 1.5 if self.mode == "approx_ivf_pq" else 1.0 + 1e-4
        if self._hnsw_quantizer is not None:
            qi, pos = self._range_by_list(q, float(r2) * widen + 1e-12)
        else:
            lims, _, pos = self._cpu_index.range_search(q, float(r2) * widen + 1e-12)
            qi = np.repeat(np.arange(m, dtype=np.int64), np.diff(lims.astype(np.int64)))
        p = pos.astype(np.int64)
        d2 = self._rerank(q, qi, p)
        keep = d2 < r2 if strict else d2 <= r2
        return _csr(qi[keep], d2[keep], self.ids[p[keep]], m)
