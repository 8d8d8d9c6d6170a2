"""Canonical (deterministic, float64) distances and exact column sums; numpy only.

The *canonical* squared distance of two float32 vectors is
``sum_k (float64(x_k) − float64(c_k))²`` reduced by numpy's pairwise summation along one
contiguous axis of length D. It is a function of the two vectors alone — not of a batch's
shape, a row's position in it, the BLAS, the thread count or the shard — which is what
makes exact selection reproducible bit for bit (see :mod:`alscale.index.base`). It is
also more accurate than the fast form (no cancellation of ``‖x‖² + ‖c‖² − 2x·c``).

:func:`canonical_min_sq_dist` computes ``min_j`` of it over many centers cheaply: a fast
backend finds, per row, the few centers whose approximate distance is within twice the
error bound of the approximate minimum (only they can attain the exact minimum), and the
canonical distance is evaluated for those pairs only.

:func:`exact_grid_sums` / :func:`combine_grid_sums` sum float32 columns exactly, in a
form whose partial sums add without rounding, so that the mean of a sharded pool is the
same float64 for every sharding (the correctly rounded mean).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Rows × centers × D float64 elements per chunk of canonical evaluation (~32 MiB).
_CHUNK_ELEMENTS = 1 << 22


def sq_dist_rows(a_N_D: np.ndarray, b_N_D: np.ndarray) -> np.ndarray:
    """Canonical ``‖a_i − b_i‖²`` per row (float64 ``[N]``); ``b`` may be one row ``[D]``.

    Inputs are cast to float64 (exact for float32/float16 values).
    """
    diff = np.subtract(np.asarray(a_N_D, dtype=np.float64), np.asarray(b_N_D, dtype=np.float64))
    diff = np.ascontiguousarray(diff)
    np.multiply(diff, diff, out=diff)
    return diff.sum(axis=-1)


def sq_dist_to_point(x_N_D: np.ndarray, c_D: np.ndarray) -> np.ndarray:
    """Canonical ``‖x_i − c‖²`` for every row (float64 ``[N]``), in bounded-memory chunks."""
    x = np.asarray(x_N_D)
    n, d = x.shape
    out = np.empty(n, dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(1, d))
    c64 = np.asarray(c_D, dtype=np.float64)
    for r0 in range(0, n, step):
        out[r0 : r0 + step] = sq_dist_rows(x[r0 : r0 + step], c64)
    return out


def canonical_min_sq_dist(
    x_Q_D: np.ndarray,
    centers_M_D: np.ndarray,
    *,
    x_norm_max: float | None = None,
    c_norm_max: float | None = None,
    backend: Any | None = None,
) -> np.ndarray:
    """``min_j`` canonical ``‖x_q − c_j‖²`` for each row (float64 ``[Q]``; +inf when M = 0).

    Prunes with ``backend`` (default: numpy): only pairs whose approximate distance is
    within ``2 * error_bound`` of the row's approximate minimum can attain the exact one.
    """
    from alscale.index.base import norm_upper_bound
    from alscale.index.blas import threads_for
    from alscale.index.numpy_backend import NumpyBackend

    x = np.ascontiguousarray(x_Q_D, dtype=np.float32)
    c = np.ascontiguousarray(centers_M_D, dtype=np.float32)
    q, m = x.shape[0], c.shape[0]
    out = np.full(q, np.inf, dtype=np.float64)
    if q == 0 or m == 0:
        return out
    be = backend if backend is not None else NumpyBackend()
    d = x.shape[1]
    x_sq = be.to_numpy(be.sq_norms(x))
    if x_norm_max is None:
        x_norm_max = norm_upper_bound(float(x_sq.max()), d)
    if c_norm_max is None:
        c_norm_max = norm_upper_bound(float(be.to_numpy(be.sq_norms(c)).max()), d)
    slack = 2.0 * be.error_bound(x_norm_max, c_norm_max, d)
    # Pass 1: approximate minimum per row.
    approx_min = be.to_numpy(be.min_sq_dist_update(x, c, np.full(q, np.inf, np.float32), x_sq_N=x_sq))
    limit = approx_min.astype(np.float64) + slack
    # Pass 2: the pairs within the slack (float32 again, within the same bound), evaluated
    # canonically, in blocks of centers.
    block = max(1, min(m, _CHUNK_ELEMENTS // max(1, q)))
    c_sq = be.to_numpy(be.sq_norms(c))
    for j0 in range(0, m, block):
        cb = c[j0 : j0 + block]
        with threads_for(q * cb.shape[0] * d):
            approx = x_sq[:, None] + c_sq[None, j0 : j0 + block] - 2.0 * (x @ cb.T)
        rows, cols = np.nonzero(approx <= limit[:, None])
        if rows.size == 0:
            continue
        step = max(1, _CHUNK_ELEMENTS // max(1, d))
        for s0 in range(0, rows.size, step):
            r, j = rows[s0 : s0 + step], cols[s0 : s0 + step]
            np.minimum.at(out, r, sq_dist_rows(x[r], cb[j]))
    return out


# -- exact sums ------------------------------------------------------------------------


def _grid_bits(n_total: int) -> tuple[int, int]:
    """``(n_bits, step)``: rows need ``n_bits`` of headroom; each finer level is ``2^-step``."""
    n_bits = math.ceil(math.log2(max(2, int(n_total))))
    return n_bits, 52 - n_bits


def grid_exponents(abs_max_D: np.ndarray, n_total: int) -> np.ndarray:
    """Per column, the exponent ``e`` of the coarsest grid ``2^e`` of :func:`exact_grid_sums`.

    Chosen so that ``n_total`` values of magnitude ``<= abs_max`` rounded to multiples of
    ``2^e`` sum exactly in float64: ``n_total * 2^ceil(log2 abs_max) <= 2^52 * 2^e``.
    """
    abs_max = np.asarray(abs_max_D, dtype=np.float64)
    top = np.where(abs_max > 0, np.ceil(np.log2(np.maximum(abs_max, 1e-300))), -149.0)
    n_bits, _ = _grid_bits(n_total)
    return (top + n_bits - 52).astype(np.int64)


def exact_grid_sums(x_N_D: np.ndarray, exps_D: np.ndarray, n_total: int) -> list[np.ndarray]:
    """Exact column sums of float32 ``x`` (``|x| <= 2^(exps + 52 - n_bits)``), by grid level.

    Level ``l`` holds, in units of the grid ``2^(exps − l*step)``, the sum of the parts
    of ``x`` on that grid (integer-valued float64 ``[D]``):
    ``sum(x[:, d]) = Σ_l levels[l][d] * 2^(exps[d] − l*step)`` exactly. Each level is an
    integer below 2^52 in magnitude whenever at most ``n_total`` rows are summed.
    Cost: four passes over ``x`` in float32, plus a sparse pass over the few values with
    bits below the coarsest grid.
    """
    x = np.asarray(x_N_D)
    n, dim = x.shape
    _, step = _grid_bits(n_total)
    exps = np.asarray(exps_D, dtype=np.int64)
    # float32 arithmetic is exact here (power-of-two scaling, rint, the exact remainder)
    # while the scales stay inside float32's range; otherwise use float64.
    work = np.float32 if (np.abs(exps).max(initial=0) + step < 120) else np.float64
    scale_D = np.ldexp(np.ones(dim, dtype=work), -exps)
    levels: list[np.ndarray] = [np.zeros(dim, dtype=np.float64)]
    rows = max(1, (1 << 20) // max(1, dim))
    rest_vals: list[np.ndarray] = []
    rest_cols: list[np.ndarray] = []
    for r0 in range(0, n, rows):
        part = np.multiply(x[r0 : r0 + rows], scale_D, dtype=work)
        whole = np.rint(part)
        levels[0] += whole.sum(axis=0, dtype=np.float64)  # integers, total < 2^52: exact
        part -= whole  # exact: the bits below the grid, |part| <= 1/2
        nz = np.flatnonzero(part != 0)
        if nz.size:
            rest_vals.append(part.ravel()[nz].astype(np.float64))
            rest_cols.append(nz % dim)
    if rest_vals:
        vals = np.concatenate(rest_vals)
        cols = np.concatenate(rest_cols)
        while vals.size:
            vals *= 2.0**step
            whole = np.rint(vals)
            # bincount adds float64 weights; they are integers with a total < 2^52: exact.
            levels.append(np.bincount(cols, weights=whole, minlength=dim))
            vals -= whole
            keep = np.flatnonzero(vals != 0)
            vals, cols = vals[keep], cols[keep]
            if len(levels) > 14:  # the float32 range spans 277 bits: cannot happen
                raise RuntimeError("exact_grid_sums did not converge")
    return levels


def exact_column_sums(x_N_D: np.ndarray) -> tuple[np.ndarray, int, list[np.ndarray]]:
    """Exact column sums of float32 rows, in a form that adds exactly across shards.

    Returns ``(exps_D, n, levels)`` for :func:`combine_exact_sums`; the grid is chosen from
    these rows alone, so shards need no prior round trip to agree on one. Two passes.
    """
    x = np.asarray(x_N_D)
    n, dim = x.shape
    abs_max = np.zeros(dim, dtype=np.float32)
    step = max(1, (1 << 20) // max(1, dim))
    for r0 in range(0, n, step):
        np.maximum(abs_max, np.abs(x[r0 : r0 + step]).max(axis=0), out=abs_max)
    exps = grid_exponents(abs_max, max(1, n))
    return exps, n, exact_grid_sums(x, exps, max(1, n)) if n else []


def combine_exact_sums(parts: list[tuple[np.ndarray, int, list[np.ndarray]]]) -> np.ndarray:
    """The correctly rounded float64 column sums from every shard's :func:`exact_column_sums`."""
    parts = [p for p in parts if p[1] > 0]
    if not parts:
        raise ValueError("combine_exact_sums needs at least one non-empty part")
    dim = int(parts[0][0].shape[0])
    out = np.zeros(dim, dtype=np.float64)
    for d in range(dim):
        terms: list[tuple[int, int]] = []  # (units, exponent): exact value units * 2^exponent
        for exps, n, levels in parts:
            _, step = _grid_bits(max(1, n))
            for level, sums in enumerate(levels):
                units = int(sums[d])
                if units:
                    terms.append((units, int(exps[d]) - level * step))
        if not terms:
            continue
        low = min(e for _, e in terms)
        total = sum(u << (e - low) for u, e in terms)  # exact (Python ints)
        out[d] = _round_scaled(total, low)
    return out


def _round_scaled(units: int, exp: int) -> float:
    """``units * 2^exp`` correctly rounded to float64 (fsum of exact 26-bit pieces)."""
    pieces: list[float] = []
    while units:
        piece = units & ((1 << 26) - 1) if units > 0 else -((-units) & ((1 << 26) - 1))
        pieces.append(math.ldexp(float(piece), exp))
        units = (units - piece) >> 26
        exp += 26
    return math.fsum(pieces)
