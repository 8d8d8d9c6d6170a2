"""Kernels of k-means assignment (arrays in, arrays out): each row's canonical nearest center,
with the bounds that let the next iteration skip rows (:mod:`alscale.strategies.clustering`).

A row's cluster is its canonical nearest center: float32 GEMM values of ``‖c‖² − 2 x·c``
(the squared distance less the row's own ``‖x‖²``, which does not change the order) decide
every row whose runner-up is farther than the slack — twice the rigorous float32 error
bound of :mod:`alscale.index.base`, which covers the full expression, so it covers this
one — and the few near ties are compared in canonical float64, ties to the lower center.

An assignment also returns the bounds of Hamerly's k-means (Hamerly, SDM 2010): per row an
upper bound on the true squared distance to its center and a lower bound on the true
squared distance to every other center. (Yinyang's per-group bounds, Ding et al., ICML
2015, were tried: at D = 32 and K = 100 their per-row bookkeeping cost more than the
distances they saved.)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from alscale.index.exact import sq_dist_rows

_BLOCK = 4096  # rows per block (a [rows, K] block of distances stays in cache)


class Assignment(NamedTuple):
    """Nearest centers of rows: ``labels_N``; ``d2_N`` (float64): the canonical squared
    distance to it, or (``canonical_d2=False``) an upper bound on the true one;
    ``lower_sq_N``: a lower bound on the true squared distance to every other center (0
    where a near tie was decided canonically: no bound)."""

    labels_N: np.ndarray
    d2_N: np.ndarray
    lower_sq_N: np.ndarray


class Centers(NamedTuple):
    """Centers prepared for assignment: float32 ``c_K_D``, ``c_m2_K_D`` = −2c (exact),
    ``c_sq_K`` (float32) and the ``slack`` of one decision."""

    c_K_D: np.ndarray
    c_m2_K_D: np.ndarray
    c_sq_K: np.ndarray
    slack: float


def sq_norms(x_N_D: np.ndarray) -> np.ndarray:
    """``‖x‖²`` per row, summed in float64, stored float32."""
    out = np.empty(x_N_D.shape[0], dtype=np.float32)
    for r0 in range(0, x_N_D.shape[0], 16384):
        xb = x_N_D[r0:r0 + 16384].astype(np.float64)
        out[r0:r0 + 16384] = np.einsum("nd,nd->n", xb, xb)
    return out


def prepare(centers_K_D: np.ndarray, x_sq_max: float) -> Centers:
    """:class:`Centers` for rows whose largest squared norm is ``x_sq_max``."""
    from alscale.index.base import norm_upper_bound
    from alscale.index.numpy_backend import NumpyBackend

    c = np.ascontiguousarray(centers_K_D, dtype=np.float32)
    d = c.shape[1]
    c_sq = sq_norms(c)
    slack = 2.0 * NumpyBackend().error_bound(norm_upper_bound(float(x_sq_max), d),
                                             norm_upper_bound(float(c_sq.max(initial=0.0)), d), d)
    return Centers(c, c * np.float32(-2.0), c_sq, slack)


def assign(x_N_D: np.ndarray, x_sq_N: np.ndarray, cs: Centers, *, canonical_d2: bool = False) -> Assignment:
    """Every row's canonical nearest center (module doc), with the bounds."""
    x = np.ascontiguousarray(x_N_D, dtype=np.float32)
    n = x.shape[0]
    out = Assignment(np.zeros(n, dtype=np.int64), np.full(n, np.inf), np.zeros(n))
    for r0 in range(0, n, _BLOCK):
        _assign_block(x[r0:r0 + _BLOCK], x_sq_N[r0:r0 + _BLOCK], cs, out, r0, canonical_d2)
    return out


def _assign_block(xb: np.ndarray, xs: np.ndarray, cs: Centers, out: Assignment, r0: int,
                  canonical_d2: bool) -> None:
    from alscale.index.blas import threads_for

    with threads_for(xb.shape[0] * cs.c_K_D.shape[0] * cs.c_K_D.shape[1]):
        approx = xb @ cs.c_m2_K_D.T
    approx += cs.c_sq_K[None, :]
    first = approx.argmin(axis=1)
    at = np.arange(xb.shape[0])
    low = approx[at, first].astype(np.float64)
    xs64 = xs.astype(np.float64)
    rows = slice(r0, r0 + xb.shape[0])
    if cs.c_K_D.shape[0] > 1:  # a row whose runner-up is farther than the slack is decided
        approx[at, first] = np.inf
        runner_up = approx.min(axis=1).astype(np.float64)
        approx[at, first] = low
        decided = (runner_up - low) > cs.slack
        out.lower_sq_N[rows] = np.where(decided, np.maximum(runner_up + xs64 - cs.slack, 0.0), 0.0)
    else:
        decided = np.ones(xb.shape[0], dtype=bool)
        out.lower_sq_N[rows] = np.inf
    dec = np.flatnonzero(decided)
    out.labels_N[r0 + dec] = first[dec]
    out.d2_N[r0 + dec] = sq_dist_rows(xb[dec], cs.c_K_D[first[dec]]) if canonical_d2 else \
        low[dec] + xs64[dec] + cs.slack
    open_rows = np.flatnonzero(~decided)
    if open_rows.size:
        lab, d2 = _near_ties(xb[open_rows], approx[open_rows], cs)
        out.labels_N[r0 + open_rows], out.d2_N[r0 + open_rows] = lab, d2


def _near_ties(xb: np.ndarray, approx: np.ndarray, cs: Centers) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a near tie: every center within the slack of the row's approximate minimum,
    compared in canonical float64 (ties to the lower center)."""
    limit = approx.min(axis=1).astype(np.float64) + cs.slack
    rows, cols = np.nonzero(approx <= limit[:, None])
    exact = sq_dist_rows(xb[rows], cs.c_K_D[cols])
    order = np.lexsort((cols, exact, rows))  # per row: smallest exact distance, then lower center
    head = np.ones(order.shape[0], dtype=bool)
    head[1:] = rows[order][1:] != rows[order][:-1]
    pick = order[head]
    lab = np.empty(xb.shape[0], dtype=np.int64)
    d2 = np.empty(xb.shape[0])
    lab[rows[pick]], d2[rows[pick]] = cols[pick], exact[pick]
    return lab, d2
