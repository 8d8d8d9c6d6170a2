"""Exact range and k-nearest-neighbour search with Voronoi-cell pruning: sub-quadratic
where the data has structure, still exact.

The rows are split into ``nlist`` cells by their nearest of a few centroids (a short
Lloyd's k-means on a seeded sample; any centroids keep the answer exact, good ones only
make it fast). Two certified lower bounds on the distance from a query ``q`` to any row
``y`` of cell ``j`` decide which cells a query must visit:

- the **bisector bound**: ``y`` is at least as close to ``c_j`` as to any other centroid
  ``c_i`` (up to the float64 assignment error ``ε``), so the linear function
  ``h(y) = ‖y − c_j‖² − ‖y − c_i‖²`` is ``<= ε`` on the cell while ``h(q) = H``; ``h``
  has gradient ``2 (c_i − c_j)``, hence ``‖q − y‖ >= (H − ε) / (2 ‖c_i − c_j‖)`` (the
  distance from ``q`` to the bisecting hyperplane, with ``i`` = the query's nearest
  centroid; Elkan, ICML 2003, uses the same bound for k-means);
- the **ball bound**: every row of cell ``j`` lies within ``R_j`` (its largest distance
  to ``c_j``, rounded up) of ``c_j``, so ``‖q − y‖ >= ‖q − c_j‖ − R_j``.

A cell whose larger bound is beyond the radius cannot hold a result and is skipped; in
every other cell the float32 candidate pass and the canonical float64 decision of
:mod:`alscale.index.neighbours` run as usual.

**Range search** (radius ``r``) visits the cells within ``r``. **k-NN** first scans, per
query, its nearest cells (by centroid distance) until they hold ``kk`` rows: the ``kk``-th
smallest approximate distance there bounds the true ``kk``-th nearest distance from above
(those rows are real rows), so a range pass at that radius plus the rigorous float32 error
bound finds every row that can be among the ``k`` nearest — the same pairs the brute-force
pass certifies, hence the same answer. What the cells change is the work: for radii of the
order of the nearest-neighbour distances a query visits a handful of cells instead of all
rows. The pruning pays on data with low intrinsic dimension (real embeddings; the
synthetic pools of the benchmarks lie in an 8-dimensional subspace); on isotropic noise in
many dimensions every cell is relevant and the search degrades to brute force plus the
centroid pass (:class:`Cells` reports the fraction of rows it scanned, and
:class:`alscale.index.neighbours.ExactIndex` stops using the cells when it is high).
"""

from __future__ import annotations

import math

import numpy as np

from alscale.index.base import U64, norm_upper_bound, sq_dist_error_bound

_LLOYD_ITERS = 5
_ASSIGN_ROWS = 65536
_QUERY_BLOCK = 2048  # queries per k-NN block (bounds the [Q, nlist] masks)
#: The k-NN probe scans the nearest cells until they hold this many times ``kk`` rows.
PROBE_FACTOR = 4


def _sq64(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    a64 = a.astype(np.float64)
    return np.einsum("nd,nd->n", a64, a64)[:, None] + b_sq[None, :] - 2.0 * (a64 @ b.T)


def default_nlist(n: int, queries: int | None = None) -> int:
    """Cells for ``n`` rows: ``√n`` (range search over the whole pool), or, for a k-NN of
    ``queries`` queries, about ``√(4·queries)`` — the balance of the assignment cost
    (``n·nlist``) against the scan (``queries · visited · n / nlist``)."""
    if queries is None:
        want = math.sqrt(n)
    else:
        want = math.sqrt(4.0 * queries)
    return int(max(1, min(4096, round(want), max(1, n // 64))))


def _lloyd(x: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """A few Lloyd iterations on a seeded sample (centroids ``[nlist, D]``, float64 values of
    float32 numbers: the same in both precisions). Any centroids keep the search exact."""
    n = x.shape[0]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 16]))
    sample = x[np.sort(rng.choice(n, size=min(n, 32 * nlist), replace=False))]
    c = sample[np.sort(rng.choice(sample.shape[0], size=nlist, replace=False))].astype(np.float32)
    s_sq = np.einsum("nd,nd->n", sample, sample)
    for _ in range(_LLOYD_ITERS):
        lab, _ = _assign(sample, s_sq, c)
        cnt = np.bincount(lab, minlength=nlist)
        sums = np.stack([np.bincount(lab, weights=sample[:, j], minlength=nlist) for j in range(x.shape[1])], 1)
        c = np.where(cnt[:, None] > 0, sums / np.maximum(cnt, 1)[:, None], c).astype(np.float32)
    return c.astype(np.float64)


def _assign(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid by float32 ``‖x‖² + ‖c‖² − 2 x·c`` and that value: the
    cell of a row is its nearest centroid up to the float32 error (the bounds allow it)."""
    from alscale.index.blas import threads_for

    n = x.shape[0]
    c_sq = np.einsum("kd,kd->k", c, c)
    lab = np.empty(n, dtype=np.int64)
    own = np.empty(n, dtype=np.float64)
    for r0 in range(0, n, _ASSIGN_ROWS):
        xb = x[r0:r0 + _ASSIGN_ROWS]
        with threads_for(xb.shape[0] * c.shape[0] * x.shape[1]):
            dd = xb @ c.T
        dd *= -2.0
        dd += c_sq[None, :]
        dd += x_sq[r0:r0 + _ASSIGN_ROWS, None]
        lab[r0:r0 + _ASSIGN_ROWS] = np.argmin(dd, axis=1)
        own[r0:r0 + _ASSIGN_ROWS] = dd[np.arange(dd.shape[0]), lab[r0:r0 + _ASSIGN_ROWS]]
    return lab, own


class Cells:
    """Rows ``x`` (float32) split into Voronoi cells, for exact range and k-NN search
    (module doc). ``scanned`` / ``scan_budget`` count row-query pairs computed against the
    brute-force count, for the caller's choice of strategy."""

    def __init__(self, x_N_D: np.ndarray, *, nlist: int | None = None, seed: int = 0) -> None:
        x = np.ascontiguousarray(x_N_D, dtype=np.float32)
        n, d = x.shape
        self.nlist = nlist = int(max(1, min(nlist or default_nlist(n), n)))
        c = _lloyd(x, nlist, seed)
        self.c = c
        self.c_sq = (c * c).sum(1)
        x_sq = np.einsum("nd,nd->n", x, x)
        x_norm = norm_upper_bound(float(x_sq.max(initial=0.0)), d)
        self._c_norm = float(np.sqrt(self.c_sq.max(initial=0.0)))
        # A row is at most this much farther from its cell's centroid than from any other
        # (its float32 assignment: twice the error of one distance); a query's float64
        # distances to the centroids have their own bound (_centroid_sq).
        self._e_assign = 2.0 * sq_dist_error_bound(x_norm, self._c_norm, d) + 1e-12
        lab, own = _assign(x, x_sq, c.astype(np.float32))
        self.order = np.argsort(lab, kind="stable")
        self.counts = np.bincount(lab, minlength=nlist)
        self.bounds = np.concatenate([[0], np.cumsum(self.counts)])
        self.xs = np.ascontiguousarray(x[self.order])
        self.xs_sq = np.einsum("nd,nd->n", self.xs, self.xs)
        self.cc = np.sqrt(np.maximum(_sq64(c, c, self.c_sq), 0.0))  # centroid separations
        far = np.zeros(nlist)
        np.maximum.at(far, lab, own)
        # R_j: an upper bound on every member's true distance to its centroid
        self.radius = np.sqrt(np.maximum(far, 0.0) + self._e_assign) * (1.0 + 1e-12) + 1e-12
        self.scanned = 0
        self.scan_budget = 0

    @property
    def n(self) -> int:
        return int(self.xs.shape[0])

    def _centroid_sq(self, q: np.ndarray) -> tuple[np.ndarray, float]:
        d = q.shape[1]
        q_norm = norm_upper_bound(float(np.einsum("qd,qd->q", q, q).max(initial=0.0)), d)
        e_q = sq_dist_error_bound(q_norm, self._c_norm, d, unit=U64, input_unit=0.0) + 1e-12
        return _sq64(q, self.c, self.c_sq), e_q

    def relevant(self, q: np.ndarray, radius: np.ndarray | float, dq: np.ndarray | None = None,
                 e_q: float | None = None) -> np.ndarray:
        """``[Q, nlist]``: cells that may hold a row within ``radius`` (per query, or one
        value) of each query, by the larger of the bisector and ball bounds."""
        if dq is None or e_q is None:
            dq, e_q = self._centroid_sq(q)
        m = q.shape[0]
        r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (m,))[:, None]
        i = np.argmin(dq, axis=1)
        h = dq - dq[np.arange(m), i][:, None] - 2.0 * e_q - self._e_assign
        sep = self.cc[i] * (1.0 + 1e-12) + 1e-300
        lower = np.maximum(h / (2.0 * sep), np.sqrt(np.maximum(dq - e_q, 0.0)) - self.radius[None, :])
        rel = lower < r * (1.0 + 1e-9) + 1e-12
        rel[np.arange(m), i] = True
        return rel

    def _blocks(self, q: np.ndarray, q_sq: np.ndarray, visit: np.ndarray):
        """Per visited cell: (query positions, row offset, approximate sq distances)."""
        from alscale.index.blas import threads_for

        for j in np.flatnonzero(visit.any(axis=0)):
            a, b = int(self.bounds[j]), int(self.bounds[j + 1])
            if b <= a:
                continue
            qs = np.flatnonzero(visit[:, j])
            with threads_for(qs.shape[0] * (b - a) * q.shape[1]):
                approx = q[qs] @ self.xs[a:b].T
            approx *= -2.0  # ‖q‖² + ‖x‖² − 2 q·x, in place
            approx += self.xs_sq[None, a:b]
            approx += q_sq[qs, None]
            self.scanned += int(qs.shape[0]) * (b - a)
            yield qs, a, approx

    def range_candidates(self, q: np.ndarray, limit: np.ndarray | float, radius: np.ndarray | float,
                         visit: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (query, row position in the original order) with approximate float32 squared
        distance <= ``limit`` (per query or one value) in the cells within ``radius``
        (``limit`` >= ``radius²``)."""
        if visit is None:
            visit = self.relevant(q, radius)
        q_sq = np.einsum("qd,qd->q", q, q)
        lim = np.broadcast_to(np.asarray(limit, dtype=np.float64), (q.shape[0],)).astype(np.float32)
        self.scan_budget += q.shape[0] * self.n
        qi_all, xi_all = [], []
        for qs, a, approx in self._blocks(q, q_sq, visit):
            r, c = np.nonzero(approx <= lim[qs, None])
            qi_all.append(qs[r])
            xi_all.append(self.order[a + c])
        if not qi_all:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(qi_all).astype(np.int64), np.concatenate(xi_all).astype(np.int64)

    def _probe_kth(self, q: np.ndarray, q_sq: np.ndarray, dq: np.ndarray, kk: int) -> np.ndarray:
        """Per query, the ``kk``-th smallest approximate squared distance over its nearest
        cells holding at least :data:`PROBE_FACTOR` · ``kk`` rows (an upper bound on the true
        ``kk``-th, up to the float32 error; more rows than ``kk`` make it tighter)."""
        m, want = q.shape[0], min(self.n, PROBE_FACTOR * kk)
        probe = self._nearest_cells(dq, want)
        best = np.full((m, kk), np.inf, dtype=np.float32)
        for qs, _, approx in self._blocks(q, q_sq, probe):
            self._merge(best, qs, approx)
        return best.max(axis=1).astype(np.float64)

    def _nearest_cells(self, dq: np.ndarray, want: int) -> np.ndarray:
        """``[Q, nlist]``: per query, its nearest cells (by centroid distance) up to the one
        that brings their rows to ``want``."""
        m, n_cells = dq.shape
        probe = np.zeros(dq.shape, dtype=bool)
        few = min(n_cells, 16)
        near = np.argpartition(dq, few - 1, axis=1)[:, :few] if few < n_cells else \
            np.tile(np.arange(n_cells), (m, 1))
        near = np.take_along_axis(near, np.argsort(np.take_along_axis(dq, near, 1), axis=1, kind="stable"), 1)
        need = (np.cumsum(self.counts[near], axis=1) < want).sum(axis=1) + 1
        r, c = np.nonzero(np.arange(few)[None, :] < np.minimum(need, few)[:, None])
        probe[r, near[r, c]] = True
        short = np.flatnonzero(need > few)  # the nearest few cells hold too few rows
        if short.size:
            order = np.argsort(dq[short], axis=1, kind="stable")
            need_s = (np.cumsum(self.counts[order], axis=1) < want).sum(axis=1) + 1
            r, c = np.nonzero(np.arange(n_cells)[None, :] < need_s[:, None])
            probe[short[r], order[r, c]] = True
        return probe

    @staticmethod
    def _merge(best: np.ndarray, qs: np.ndarray, approx: np.ndarray) -> None:
        """Keep per query the ``kk`` smallest of ``best`` and a new block (unordered)."""
        kk = best.shape[1]
        both = np.concatenate([best[qs], approx], axis=1)
        best[qs] = np.partition(both, kk - 1, axis=1)[:, :kk]

    def knn_candidates(self, q: np.ndarray, kk: int, slack: float) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (query, row position) with approximate squared distance within ``slack``
        (twice the float32 error bound) of the query's ``kk``-th smallest: a superset of
        the exact ``kk`` nearest rows and of every row tied with them (module doc). Needs
        ``kk <= n``."""
        qi_all, xi_all = [], []
        for q0 in range(0, q.shape[0], _QUERY_BLOCK):
            qb = q[q0:q0 + _QUERY_BLOCK]
            q_sq = np.einsum("qd,qd->q", qb, qb)
            dq, e_q = self._centroid_sq(qb)
            self.scan_budget += qb.shape[0] * self.n
            limit = self._probe_kth(qb, q_sq, dq, kk) + slack
            visit = self.relevant(qb, np.sqrt(limit), dq, e_q)
            lim32 = limit.astype(np.float32)
            qi_l, xi_l, v_l = [], [], []
            for qs, a, approx in self._blocks(qb, q_sq, visit):
                r, c = np.nonzero(approx <= lim32[qs, None])
                qi_l.append(qs[r])
                xi_l.append(self.order[a + c])
                v_l.append(approx[r, c])
            qi, xi, v = np.concatenate(qi_l), np.concatenate(xi_l), np.concatenate(v_l).astype(np.float64)
            # every row within the probe's radius was seen: its kk-th smallest is the float32 kk-th
            keep = v <= _kth_per_query(qi, v, qb.shape[0], kk)[qi] + slack
            qi_all.append(qi[keep] + q0)
            xi_all.append(xi[keep])
        return np.concatenate(qi_all).astype(np.int64), np.concatenate(xi_all).astype(np.int64)

    def scan_fraction(self) -> float:
        """Row-query pairs computed so far over the brute-force count (1.0: no pruning)."""
        return self.scanned / self.scan_budget if self.scan_budget else 0.0


def _kth_per_query(qi: np.ndarray, v: np.ndarray, m: int, kk: int) -> np.ndarray:
    """Per query ``0..m-1``, the ``kk``-th smallest of its values ``v`` (inf when fewer)."""
    o = np.lexsort((v, qi))
    qs, vs = qi[o], v[o]
    starts = np.searchsorted(qs, np.arange(m))
    counts = np.bincount(qs, minlength=m)
    out = np.full(m, np.inf)
    ok = counts >= kk
    out[ok] = vs[starts[ok] + kk - 1]
    return out


#: The former name (range search only).
CellRange = Cells
