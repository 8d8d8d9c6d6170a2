"""k-means++ / BADGE seeding, shard side: each shard's quantized factors, weights and ops.

The state (:class:`KMeansSpace`, in ``ShardState.strategy_state["kmeanspp"]``) holds, for every
candidate, its quantized factors and a weight ``u ≥ D²`` (its grid bound) with the int64
prefix sums the coordinator's proposals invert (:mod:`alscale.strategies.kmeanspp` explains
why this is exact for any shard count). The ops, the mass family of the seam:

- :func:`kpp_init` → :class:`SeedInit`: build the state; offer the shard's first-center candidate;
- :func:`kpp_sync` → :class:`Masses`: add centers to the weights and rebuild the prefix sums;
- :func:`kpp_propose` → :class:`Proposals` (reads): the rows holding integer targets (D² draws);
- :func:`kpar_oversample` → :class:`Factors` (reads): a k-means‖ oversampling round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from alscale.strategies.kmeanspp_kernels import (
    _GEMM_ELEMS,
    _ROW_ELEMS,
    _S_FIRST,
    _S_OVERSAMPLE,
    _keyed,
    bound_min_sq_dist,
    exact_sq_norms,
    filter_kappa,
    fixed_point_bits,
    gradient_factors,
    grid_ceil,
    min_sq_dist,
    prepare_centers,
    quantize_rows_,
)
from alscale.strategies.shards import ShardState, shard_op

_KEY = "kmeanspp"
OP = f"{__name__}."


@dataclass
class KMeansSpace:
    """One shard's k-means++ state over its candidate (unlabelled) rows U (kept in
    ``ShardState.strategy_state["kmeanspp"]``)."""

    row_ids_U: np.ndarray  # int64
    a_U_C: np.ndarray | None  # float32 quantized BADGE factor; None for plain k-means++
    h_U_D: np.ndarray  # float32 quantized embedding
    n_U: np.ndarray  # float64 squared norm of g (exact norms, one rounding)
    u_U: np.ndarray  # float64 weight bound: grid_ceil(D²) (filtered) or D² (inf before any center)
    nearest_U: np.ndarray  # int64 center that last lowered u (-1 before any)
    chosen_U: np.ndarray  # bool: synced as a center
    cum_U: np.ndarray  # int64 prefix sums of ceil(u * 2^e)
    kappa: float  # filter error bound (filter_kappa)
    n_centers: int = 0
    exact_rows: int = 0  # rows the filter sent to the exact kernel (diagnostics)



def _space(state: ShardState) -> KMeansSpace:
    sp = state.strategy_state.get(_KEY)
    if sp is None:
        raise RuntimeError("k-means++ shard state missing: kpp_init must run first (after any exclude)")
    return sp



def _build_space(state: ShardState, space: str) -> KMeansSpace:
    emb = state.embeddings_N_D
    if emb is None:
        raise ValueError("k-means++ / BADGE needs embeddings, but this shard has none")
    lp = state.log_probs_N_K_C
    if space == "badge" and lp is None:
        raise ValueError("BADGE needs log-probs, but this shard has none")
    cand = np.flatnonzero(state.candidates_N)
    u, d = cand.shape[0], emb.shape[1]
    h = np.empty((u, d), dtype=np.float32)
    n = np.empty(u, dtype=np.float64)
    a = None
    if space == "badge":
        a = np.empty((u, lp.shape[2]), dtype=np.float32)
        step = max(64, _ROW_ELEMS // (lp.shape[1] * lp.shape[2] + d))
    else:
        step = max(64, _ROW_ELEMS // d)
    for lo in range(0, u, step):
        rows: np.ndarray | slice = cand[lo : lo + step]
        hi = lo + rows.shape[0]
        if rows[-1] - rows[0] == rows.shape[0] - 1:  # contiguous: a view, no gather
            rows = slice(int(rows[0]), int(rows[-1]) + 1)
        # Quantize in place in the float32 destination (the quantized value is a function of
        # the float32-rounded input, which is all that invariance needs).
        h[lo:hi] = emb[rows]
        quantize_rows_(h[lo:hi], fixed_point_bits(d))
        n[lo:hi] = exact_sq_norms(h[lo:hi])
        if a is not None:
            a[lo:hi] = gradient_factors(lp[rows])
            quantize_rows_(a[lo:hi], fixed_point_bits(a.shape[1]))
            n[lo:hi] *= exact_sq_norms(a[lo:hi])
    return KMeansSpace(
        row_ids_U=state.row_ids_N[cand],
        a_U_C=a,
        h_U_D=h,
        n_U=n,
        u_U=np.full(u, np.inf),
        nearest_U=np.full(u, -1, dtype=np.int64),
        chosen_U=np.zeros(u, dtype=bool),
        cum_U=np.zeros(u, dtype=np.int64),
        kappa=filter_kappa(None if a is None else a.shape[1], d),
    )



class FirstCenter(NamedTuple):
    """A shard's first-center candidate: its key (BADGE: ``‖g‖²``, larger wins; plain
    k-means++: the keyed uniform, smaller wins), row id, factors and ``‖g‖²``."""

    key: float
    row_id: int
    a_C: np.ndarray | None
    h_D: np.ndarray
    n: float


class SeedInit(NamedTuple):
    """What :func:`kpp_init` reports: candidates, the largest ``‖g‖²``, the factor dimensions
    ``(C or None, D)`` and the first-center candidate (None without candidates)."""

    n: int
    max_n: float
    dims: tuple[int | None, int]
    first: FirstCenter | None


@shard_op
def kpp_init(state: ShardState, space: str, seed: int, round: int) -> SeedInit:
    """Build the shard's quantized factors; offer its first-center candidate (ties to the
    lower ``row_id``)."""
    sp = _build_space(state, space)
    state.strategy_state[_KEY] = sp
    u = sp.row_ids_U.shape[0]
    dims = (None if sp.a_U_C is None else sp.a_U_C.shape[1], sp.h_U_D.shape[1])
    if u == 0:
        return SeedInit(0, 0.0, dims, None)
    if space == "badge":
        key_U = sp.n_U
        best = np.flatnonzero(key_U == key_U.max())
    else:
        key_U = _keyed(seed, round, _S_FIRST, sp.row_ids_U)
        best = np.flatnonzero(key_U == key_U.min())
    pos = int(best[np.argmin(sp.row_ids_U[best])])
    a = None if sp.a_U_C is None else sp.a_U_C[pos]
    first = FirstCenter(float(key_U[pos]), int(sp.row_ids_U[pos]), a, sp.h_U_D[pos], float(sp.n_U[pos]))
    return SeedInit(u, float(sp.n_U.max()), dims, first)


def _lower(sp: KMeansSpace, rows: np.ndarray, new_u: np.ndarray, j: np.ndarray, base: int) -> None:
    """u[rows] = min(u, new_u); the center index of every strict decrease is recorded."""
    dec = new_u < sp.u_U[rows]
    sp.u_U[rows[dec]] = new_u[dec]
    sp.nearest_U[rows[dec]] = base + j[dec]


def _update_chunk(
    sp: KMeansSpace, lo: int, hi: int, exact: tuple, filt: tuple | None, base: int, nearest: bool
) -> None:
    """Lower ``u`` of rows ``[lo, hi)`` by the new centers (see :func:`kpp_sync`)."""
    a = None if sp.a_U_C is None else sp.a_U_C[lo:hi]
    h, n = sp.h_U_D[lo:hi], sp.n_U[lo:hi]
    rows = np.arange(lo, hi)
    if filt is None:  # reference: exact D² for every row
        d, j = min_sq_dist(a, h, n, *exact)
        _lower(sp, rows, d, j, base)
        return
    lo_T, hi_T, j_T, lo2_T = bound_min_sq_dist(a, h, n, *filt, kappa=sp.kappa, second=nearest)
    u_old = sp.u_U[lo:hi]
    may = lo_T < u_old  # else every new distance is >= u already
    g_lo = grid_ceil(np.maximum(lo_T, 0.0))
    known = may & (lo_T > 0) & (g_lo == grid_ceil(hi_T))  # grid_ceil(exact min) = g_lo
    if nearest:  # a recorded center must be the exact argmin: unique by the bounds
        known &= (g_lo >= u_old) | (lo2_T > hi_T)
    k = np.flatnonzero(known)
    _lower(sp, rows[k], g_lo[k], j_T[k], base)
    x_all = np.flatnonzero(may & ~known)
    sp.exact_rows += int(x_all.shape[0])
    width = h.shape[1] + (0 if a is None else a.shape[1])
    sub = max(64, min(_GEMM_ELEMS // exact[1].shape[0], _ROW_ELEMS // (2 * width)))  # float64 rows
    for s0 in range(0, x_all.shape[0], sub):
        x = x_all[s0 : s0 + sub]
        d, j = min_sq_dist(None if a is None else a[x], h[x], n[x], *exact)
        _lower(sp, rows[x], grid_ceil(d), j, base)



class Masses(NamedTuple):
    """What :func:`kpp_sync` reports: the shard's integer mass ``Σ ceil(u · 2^e)``, its largest
    weight, (when asked) how many rows each center so far last lowered, and how many rows
    needed the exact kernel so far."""

    mass: int
    max_u: float
    counts_M: np.ndarray | None
    exact_rows: int


@shard_op
def kpp_sync(
    state: ShardState,
    row_ids_M: np.ndarray,
    a_M_C: np.ndarray | None,
    h_M_D: np.ndarray,
    n_M: np.ndarray,
    e: int,
    filtered: bool = True,
    want_counts: bool = False,
) -> Masses:
    """Add M centers to the shard's weights, then rebuild the integer prefix sums at ``2^e``.

    The weight of a row is ``u = grid_ceil(D²)`` with ``filtered`` (float32 GEMMs decide
    it from rigorous bounds; rows whose grid cell the bounds do not settle go through the
    exact float64 kernel), or the exact ``D²`` otherwise. Either way ``u`` is a function of
    the row and the centers only. Chosen rows get ``u = 0``.

    Returns the shard's :class:`Masses`.
    """
    sp = _space(state)
    m = row_ids_M.shape[0]
    u = sp.row_ids_U.shape[0]
    if m:
        ca, ch = prepare_centers(a_M_C, h_M_D)
        cn = np.asarray(n_M, dtype=np.float64)
        filt = None
        if filtered:
            fa = None if a_M_C is None else (-2.0 * a_M_C).astype(np.float32)
            fh = h_M_D.astype(np.float32) if a_M_C is not None else (-2.0 * h_M_D).astype(np.float32)
            filt = (fa, fh, ((1.0 - sp.kappa) * cn).astype(np.float32), cn)
        width = (0 if sp.a_U_C is None else sp.a_U_C.shape[1]) + sp.h_U_D.shape[1]
        if filtered:  # float32 T x M blocks; few, large BLAS calls (each call costs a thread wake-up)
            step = max(64, min(2 * _GEMM_ELEMS // m, 1 << 19))
        else:  # the exact kernel also converts T rows to float64
            step = max(64, min(_GEMM_ELEMS // m, _ROW_ELEMS // (2 * width)))
        for lo in range(0, u, step):
            _update_chunk(sp, lo, min(lo + step, u), (ca, ch, cn), filt, sp.n_centers, want_counts)
        hit = np.flatnonzero(np.isin(sp.row_ids_U, row_ids_M))
        sp.chosen_U[hit] = True
        sp.u_U[hit] = 0.0
        sp.n_centers += m
    if u == 0:
        counts = np.zeros(sp.n_centers, dtype=np.int64) if want_counts else None
        return Masses(0, 0.0, counts, sp.exact_rows)
    q_U = np.ceil(np.ldexp(sp.u_U, e)).astype(np.int64)
    np.cumsum(q_U, out=sp.cum_U)
    counts = np.bincount(sp.nearest_U[sp.nearest_U >= 0], minlength=sp.n_centers) if want_counts else None
    return Masses(int(sp.cum_U[-1]), float(sp.u_U.max()), counts, sp.exact_rows)



class Proposals(NamedTuple):
    """One shard's D² proposals (:func:`kpp_propose`), one row per target: the row, its
    integer weight ``q`` and its factors (``a`` None for plain k-means++)."""

    row_ids_R: np.ndarray
    q_R: np.ndarray
    a_R_C: np.ndarray | None
    h_R_D: np.ndarray
    n_R: np.ndarray


@shard_op(mutates=False)
def kpp_propose(state: ShardState, targets_R: np.ndarray) -> Proposals:
    """Rows whose prefix interval ``[cum_{i−1}, cum_i)`` holds each local integer target."""
    sp = _space(state)
    pos = np.searchsorted(sp.cum_U, np.asarray(targets_R, dtype=np.int64), side="right")
    q = sp.cum_U[pos] - np.where(pos > 0, sp.cum_U[np.maximum(pos - 1, 0)], 0)
    a = None if sp.a_U_C is None else sp.a_U_C[pos]
    return Proposals(sp.row_ids_U[pos], q, a, sp.h_U_D[pos], sp.n_U[pos])


class Factors(NamedTuple):
    """Rows with their quantized factors (``a_R_C`` None for plain k-means++) and ``‖g‖²``."""

    row_ids_R: np.ndarray
    a_R_C: np.ndarray | None
    h_R_D: np.ndarray
    n_R: np.ndarray


@shard_op(mutates=False)
def kpar_oversample(state: ShardState, ell: float, mass: int, e: int, seed: int, round: int, r: int) -> Factors:
    """k-means‖ round ``r``: each unchosen candidate joins with probability ``min(1, ℓ·u/φ)``.

    ``φ = mass · 2^−e`` (the integer mass, exact and shard-invariant); ``u`` the row's
    weight. The coin of a row is the keyed uniform of ``(seed, round, r, row_id)``.
    """
    sp = _space(state)
    p = np.minimum(1.0, ell * np.ldexp(sp.u_U, e) / float(mass))
    pick = np.flatnonzero((_keyed(seed, round, _S_OVERSAMPLE + r, sp.row_ids_U) < p) & ~sp.chosen_U)
    a = None if sp.a_U_C is None else sp.a_U_C[pick]
    return Factors(sp.row_ids_U[pick], a, sp.h_U_D[pick], sp.n_U[pick])
