"""Exact range search with Voronoi-cell pruning: sub-quadratic for small radii, still exact.

The rows are split into ``nlist`` cells by their nearest of a few centroids (a short
Lloyd's k-means on a seeded sample; any centroids keep the answer exact, good ones only
make it fast). A row ``y`` of cell ``j`` is at least as close to ``c_j`` as to any other
centroid ``c_i`` (up to the float64 assignment error ``ε``), so for a query ``q`` the
linear function ``h(y) = ‖y − c_j‖² − ‖y − c_i‖²`` is ``<= ε`` on the cell while
``h(q) = H``; ``h`` has gradient ``2 (c_i − c_j)``, hence

    ‖q − y‖ >= (H − ε) / (2 ‖c_i − c_j‖)      for every y in cell j

(the distance from ``q`` to the bisecting hyperplane; Elkan, ICML 2003, uses the same
bound for k-means). Taking ``i`` = the query's nearest centroid, a cell whose bound is
beyond the radius cannot hold a result and is skipped; in every other cell the float32
candidate pass and the canonical float64 decision of :mod:`alscale.index.neighbours`
run as usual. The result is therefore identical to brute force; what the cells change is
the work — for a radius of the order of the nearest-neighbour distances, each query visits
a handful of cells instead of all rows.
"""

from __future__ import annotations

import math

import numpy as np

from alscale.index.base import U64, norm_upper_bound, sq_dist_error_bound

_LLOYD_ITERS = 8


def _sq64(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    a64 = a.astype(np.float64)
    return np.einsum("nd,nd->n", a64, a64)[:, None] + b_sq[None, :] - 2.0 * (a64 @ b.T)


class CellRange:
    """Rows ``x`` (float32) split into Voronoi cells, for exact range search (module doc)."""

    def __init__(self, x_N_D: np.ndarray, *, nlist: int | None = None, seed: int = 0) -> None:
        x = np.ascontiguousarray(x_N_D, dtype=np.float32)
        n, d = x.shape
        nlist = int(nlist or max(1, min(4096, round(math.sqrt(n)))))
        rng = np.random.default_rng(np.random.SeedSequence([seed, 16]))
        sample = x[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))].astype(np.float64)
        c = sample[np.sort(rng.choice(sample.shape[0], size=nlist, replace=False))]
        for _ in range(_LLOYD_ITERS):
            lab = np.argmin(_sq64(sample, c, (c * c).sum(1)), axis=1)
            cnt = np.bincount(lab, minlength=nlist)
            sums = np.zeros_like(c)
            np.add.at(sums, lab, sample)
            c = np.where(cnt[:, None] > 0, sums / np.maximum(cnt, 1)[:, None], c)
        self.c = c
        self.c_sq = (c * c).sum(1)
        x_norm = norm_upper_bound(float(np.einsum("nd,nd->n", x, x).max(initial=0.0)), d)
        self._c_norm = float(np.sqrt(self.c_sq.max(initial=0.0)))
        # Error of one float64 distance of a row (or query of similar norm) to a centroid.
        self._e64 = sq_dist_error_bound(x_norm, self._c_norm, d, unit=U64, input_unit=0.0) + 1e-12
        lab = np.empty(n, dtype=np.int64)
        for r0 in range(0, n, 65536):
            lab[r0:r0 + 65536] = np.argmin(_sq64(x[r0:r0 + 65536], c, self.c_sq), axis=1)
        self.order = np.argsort(lab, kind="stable")
        counts = np.bincount(lab, minlength=nlist)
        self.bounds = np.concatenate([[0], np.cumsum(counts)])
        self.xs = np.ascontiguousarray(x[self.order])
        self.xs_sq = np.einsum("nd,nd->n", self.xs, self.xs)
        self.cc = np.sqrt(np.maximum(_sq64(c, c, self.c_sq), 0.0))  # centroid separations

    def relevant(self, q: np.ndarray, radius: float) -> np.ndarray:
        """``[Q, nlist]``: cells that may hold a row within ``radius`` of each query."""
        d = q.shape[1]
        q_norm = norm_upper_bound(float(np.einsum("qd,qd->q", q, q).max(initial=0.0)), d)
        e_q = sq_dist_error_bound(q_norm, self._c_norm, d, unit=U64, input_unit=0.0) + 1e-12
        dq = _sq64(q, self.c, self.c_sq)
        i = np.argmin(dq, axis=1)
        h = dq - dq[np.arange(q.shape[0]), i][:, None] - 2.0 * e_q - 2.0 * self._e64
        sep = self.cc[i] * (1.0 + 1e-12) + 1e-300
        lower = h / (2.0 * sep)
        rel = lower < radius * (1.0 + 1e-9) + 1e-12
        rel[np.arange(q.shape[0]), i] = True
        return rel

    def range_candidates(self, q: np.ndarray, limit: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (query, row position in the original order) with approximate float32 squared
        distance <= ``limit`` in the cells within ``radius`` (``limit`` >= ``radius²``)."""
        from alscale.index.blas import threads_for

        rel = self.relevant(q, radius)
        q_sq = np.einsum("qd,qd->q", q, q)
        qi_all, xi_all = [], []
        for j in np.flatnonzero(rel.any(axis=0)):
            a, b = int(self.bounds[j]), int(self.bounds[j + 1])
            if b <= a:
                continue
            qs = np.flatnonzero(rel[:, j])
            xb = self.xs[a:b]
            with threads_for(qs.shape[0] * (b - a) * q.shape[1]):
                approx = q_sq[qs, None] + self.xs_sq[None, a:b] - 2.0 * (q[qs] @ xb.T)
            r, c = np.nonzero(approx <= limit)
            qi_all.append(qs[r])
            xi_all.append(self.order[a + c])
        if not qi_all:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(qi_all).astype(np.int64), np.concatenate(xi_all).astype(np.int64)
