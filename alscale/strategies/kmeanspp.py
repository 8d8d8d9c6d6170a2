"""k-means++ seeding over shards, exact and reproducible for any shard count; and k-means‖.

Two spaces share one loop:

- ``"badge"``: BADGE gradient embeddings ``g = a ⊗ h`` (Ash et al., "Deep Batch Active
  Learning by Diverse, Uncertain Gradient Lower Bounds", ICLR 2020), never materialised:
  ``‖g_i − g_j‖² = ‖a_i‖²‖h_i‖² + ‖a_j‖²‖h_j‖² − 2(a_i·a_j)(h_i·h_j)`` (DESIGN §1.4; the
  factorisation is also in the BADGE reference code since 2023, after Zhang et al., arXiv
  2306.09910 App. D). ``a`` comes from :func:`alscale.strategies.kmeanspp_kernels.gradient_factors`.
- ``"embedding"``: plain k-means++ (Arthur & Vassilvitskii, "k-means++: The Advantages of
  Careful Seeding", SODA 2007) over the embeddings, i.e. the same formula with ``a ≡ 1``.

**Exact mode** (:func:`seed_exact`). First center: for BADGE the candidate with the largest
``‖g‖²`` (as the reference code does), for plain k-means++ a uniformly random candidate
(the keyed uniform with the smallest value); ties go to the lower ``row_id``. Every next
center is drawn with probability ∝ ``D²`` = squared distance to the nearest chosen center
(textbook D² sampling). Labelled rows are not candidates and are not centers (the BADGE
paper seeds on the unlabelled pool only).

How it is sharded (DESIGN §3, stale-bound rejection). Shards keep, for each candidate, a
weight ``u_i ≥ s_i``, where ``s_i`` is its exact D² to the centers *synced* so far
(``u_i = grid_ceil(s_i)``, at most 3% above). The coordinator draws proposals ∝ ``u`` and
accepts proposal ``i`` with probability ``w_i / u_i``, where ``w_i`` is its exact current D²
(to the synced centers and to those picked since the last sync, which the coordinator
holds; it recomputes ``w_i`` from the row's factors). Each trial accepts ``i`` with
probability ∝ ``w_i``, so an accepted row is *exactly* D²-distributed. Proposals come in
batches; new centers go to the shards in one batched update when a batch is used up or
the pending centers reach ``clamp(picks so far, 16, 1024)``; round trips grow like log B.

Why the result does not depend on the shard count (nor on local vs Ray, nor on BLAS):

1. *Exact distances.* Factors are stored as per-row fixed-point numbers
   (:func:`quantize_rows`: ``F`` fraction bits relative to the row's largest power of two,
   exact in float32), chosen so that every partial sum of a dot product of two stored rows
   is an integer multiple of one unit below ``2**53``: their float64 GEMMs are exact
   whatever the summation order, blocking or thread split, and the element-wise float64
   steps are the same code on the same values. So the exact D² (:func:`min_sq_dist`) is a
   function of the row and the centers alone. (Rounding to F ≥ 21 bits moves a distance by
   about 1e-6 relative — the size of float32 GEMM error.)
2. *Exact weights from fast GEMMs.* Shards compute float32 GEMMs with a rigorous error
   bound (:func:`filter_kappa`, :func:`bound_min_sq_dist`) and keep ``u = grid_ceil(s)``
   (6 significant bits): wherever the bounds fall inside one grid cell that is the value;
   the few rows whose bounds straddle a cell edge (or may be 0) go through the exact float64
   kernel. Either way ``u_i`` is the same function of the row and the centers.
3. *Integer proposal weights.* ``q_i = ceil(u_i · 2^e)`` with one global ``e`` (from an
   upper bound of all weights, so the total stays below 2**62). Integer sums are
   associative, so every prefix sum — per shard, over shards, in any grouping — is exact.
4. *Proposals invert the global CDF.* Trial ``n`` takes 104 keyed random bits ``K_n``
   (``noise.keyed_uniform`` of ``(seed, round, n)``) and the target ``t = ⌊K_n · Q / 2^104⌋``
   in ``[0, Q)``; the proposal is the row whose prefix interval in the global row order
   holds ``t``: the coordinator finds the shard from the shards' integer masses, the shard
   the row by ``searchsorted`` on its int64 prefix sums. Same row for any contiguous split.
5. *Acceptance* compares a keyed uniform of trial ``n`` with ``w_i · 2^e / q_i ≤ 1`` (the
   ceilings are corrected, not approximated). The sync schedule depends only on these
   decisions. Hence the selection is a function of (seed, round, pool rows in order,
   labelled set). The factors of BADGE go through ``numpy.exp``, which may differ in the
   last bit between CPU instruction sets; that could move a 23-bit factor (odds ~2^-29 per
   value), so bit-identical results across *different* machine types are likely, not proven.

Unexamined proposals are dropped at a sync and their trial numbers reused: no decision
looked at them, so the reused keys are still fresh. If every remaining candidate sits at
distance 0 from a center (D² mass 0), the rest are taken in keyed-uniform order.

**k-means‖** (:func:`seed_parallel`; Bahmani et al., "Scalable K-Means++", VLDB 2012):
start from the same first center, then ``rounds`` times add every candidate independently
with probability ``min(1, ℓ·u/φ)`` (``ℓ = oversampling · B``; ``u`` the weight above, φ
their sum), weight each candidate by the number of rows nearest to it (up to the weight
grid), and run weighted k-means++ on the candidates at the coordinator (no Lloyd steps: the
picks must be rows). Approximate by name (DESIGN §1.5); ``benchmarks/selection_badge.py``
measures its cost against exact.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies.kmeanspp_kernels import (
    _GEMM_ELEMS,
    _ROW_ELEMS,
    _S_ACCEPT,
    _S_FINAL,
    _S_FIRST,
    _S_OVERSAMPLE,
    _S_REST,
    _keyed,
    bound_min_sq_dist,
    exact_sq_norms,
    filter_kappa,
    gradient_factors,
    fixed_point_bits,
    grid_ceil,
    min_sq_dist,
    prepare_centers,
    quantize_rows,
    quantize_rows_,
    scale_exponent,
    seeding_cost,
    trial_bits,
    trial_uniforms,
)
from alscale.strategies import progress
from alscale.strategies.shards import ShardState, Shards, shard_op
from alscale.types import Selection
from alscale.strategies import spec as _spec

logger = logging.getLogger(__name__)

__all__ = [
    "SPACES",
    "SeedingStats",
    "check_parallel_options",
    "exact_sq_norms",
    "bound_min_sq_dist",
    "filter_kappa",
    "fixed_point_bits",
    "grid_ceil",
    "min_sq_dist",
    "prepare_centers",
    "quantize_rows",
    "quantize_rows_",
    "seed_exact",
    "seed_parallel",
    "seeding_cost",
    "select_kmeans_parallel",
    "select_kmeanspp",
    "trial_uniforms",
]

SPACES = ("badge", "embedding")

_PROPOSAL_BYTES = 64 << 20  # most factor bytes one proposal batch carries
_FIRST_BOUND = 4.25  # weights after the first center are below 4.25 max ‖g‖² (grid and rounding)


def _op(name: str) -> str:
    return f"{__name__}.{name}"


# ---------------------------------------------------------------------------------------
# Shard side: state in ShardState.strategy_state, ops registered with @shard_op.
# ---------------------------------------------------------------------------------------
@dataclass
class _Space:
    """One shard's k-means++ state over its candidate (unlabelled) rows U."""

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


def _space(state: ShardState) -> _Space:
    sp = state.strategy_state.get("kmeanspp")
    if sp is None:
        raise RuntimeError("k-means++ shard state missing: kpp_init must run first (after any exclude)")
    return sp


def _build_space(state: ShardState, space: str) -> _Space:
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
    return _Space(
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


def _offer(sp: _Space, pos: int) -> tuple:
    a = None if sp.a_U_C is None else sp.a_U_C[pos]
    return int(sp.row_ids_U[pos]), a, sp.h_U_D[pos], float(sp.n_U[pos])


@shard_op
def kpp_init(state: ShardState, space: str, seed: int, round: int) -> dict[str, Any]:
    """Build the shard's quantized factors; offer its first-center candidate.

    Returns ``{"n", "max_n", "dims", "offer"}``; ``offer`` is ``(key, row_id, a, h, n)``
    (None when the shard has no candidate): for BADGE ``key = ‖g‖²`` (largest wins), for
    plain k-means++ the keyed uniform (smallest wins); ties to the lower ``row_id``.
    """
    sp = _build_space(state, space)
    state.strategy_state["kmeanspp"] = sp
    u = sp.row_ids_U.shape[0]
    dims = (None if sp.a_U_C is None else sp.a_U_C.shape[1], sp.h_U_D.shape[1])
    if u == 0:
        return {"n": 0, "max_n": 0.0, "dims": dims, "offer": None}
    if space == "badge":
        key_U = sp.n_U
        best = np.flatnonzero(key_U == key_U.max())
    else:
        key_U = _keyed(seed, round, _S_FIRST, sp.row_ids_U)
        best = np.flatnonzero(key_U == key_U.min())
    pos = int(best[np.argmin(sp.row_ids_U[best])])
    return {"n": u, "max_n": float(sp.n_U.max()), "dims": dims, "offer": (float(key_U[pos]), *_offer(sp, pos))}


def _lower(sp: _Space, rows: np.ndarray, new_u: np.ndarray, j: np.ndarray, base: int) -> None:
    """u[rows] = min(u, new_u); the center index of every strict decrease is recorded."""
    dec = new_u < sp.u_U[rows]
    sp.u_U[rows[dec]] = new_u[dec]
    sp.nearest_U[rows[dec]] = base + j[dec]


def _update_chunk(
    sp: _Space, lo: int, hi: int, exact: tuple, filt: tuple | None, base: int, nearest: bool
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
) -> tuple[int, float, np.ndarray | None, int]:
    """Add M centers to the shard's weights, then rebuild the integer prefix sums at ``2^e``.

    The weight of a row is ``u = grid_ceil(D²)`` with ``filtered`` (float32 GEMMs decide
    it from rigorous bounds; rows whose grid cell the bounds do not settle go through the
    exact float64 kernel), or the exact ``D²`` otherwise. Either way ``u`` is a function of
    the row and the centers only. Chosen rows get ``u = 0``.

    Returns ``(Q, max_u, counts, exact_rows)``: the shard's integer mass ``Σ ceil(u · 2^e)``,
    its largest weight, (``want_counts``) how many rows each center so far last lowered,
    and how many rows needed the exact kernel so far.
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
        return 0, 0.0, counts, sp.exact_rows
    q_U = np.ceil(np.ldexp(sp.u_U, e)).astype(np.int64)
    np.cumsum(q_U, out=sp.cum_U)
    counts = np.bincount(sp.nearest_U[sp.nearest_U >= 0], minlength=sp.n_centers) if want_counts else None
    return int(sp.cum_U[-1]), float(sp.u_U.max()), counts, sp.exact_rows


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


@shard_op(mutates=False)
def kpp_rest(state: ShardState, k: int, seed: int, round: int) -> tuple[np.ndarray, np.ndarray]:
    """The shard's ``k`` unchosen candidates with the smallest keyed uniforms (for D² mass 0)."""
    sp = _space(state)
    free = np.flatnonzero(~sp.chosen_U)
    key = _keyed(seed, round, _S_REST, sp.row_ids_U[free])
    order = np.lexsort((sp.row_ids_U[free], key))[:k]
    return key[order], sp.row_ids_U[free][order]


@shard_op
def kpar_oversample(
    state: ShardState, ell: float, mass: int, e: int, seed: int, round: int, r: int
) -> tuple:
    """k-means‖ round ``r``: each unchosen candidate joins with probability ``min(1, ℓ·u/φ)``.

    ``φ = mass · 2^−e`` (the integer mass, exact and shard-invariant); ``u`` the row's
    weight. The coin of a row is the keyed uniform of ``(seed, round, r, row_id)``.
    Returns ``(row_ids, a, h, n)``.
    """
    sp = _space(state)
    p = np.minimum(1.0, ell * np.ldexp(sp.u_U, e) / float(mass))
    pick = np.flatnonzero((_keyed(seed, round, _S_OVERSAMPLE + r, sp.row_ids_U) < p) & ~sp.chosen_U)
    a = None if sp.a_U_C is None else sp.a_U_C[pick]
    return sp.row_ids_U[pick], a, sp.h_U_D[pick], sp.n_U[pick]


# ---------------------------------------------------------------------------------------
# Coordinator side.
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedingStats:
    """What a seeding run cost (for logs and benchmarks)."""

    syncs: int  # batched center updates sent to the shards
    trials: int  # proposals examined (exact) / candidates (k-means‖)
    accepted: int  # picks made by D² sampling (not the first, not a zero-mass rest)
    round_trips: int  # coordinator <-> shards fan-outs
    rounds: int = 0  # k-means‖ oversampling rounds
    exact_rows: int = 0  # rows the float32 filter sent to the exact kernel, all shards


class _Centers:
    """Centers in float64 GEMM form (:func:`prepare_centers`) plus their float32 rows; growable."""

    def __init__(self, c: int | None, d: int) -> None:
        self.c, self.d, self.m = c, d, 0
        self.row_ids: list[int] = []
        self.a32: list[np.ndarray] = []
        self.h32: list[np.ndarray] = []
        self.n: list[float] = []
        self._ca = None if c is None else np.empty((16, c))
        self._ch = np.empty((16, d))
        self._cn = np.empty(16)

    def add(self, row_id: int, a: np.ndarray | None, h: np.ndarray, n: float) -> None:
        if self.m == self._ch.shape[0]:
            grow = 2 * self.m
            self._ch = np.resize(self._ch, (grow, self.d))
            self._cn = np.resize(self._cn, grow)
            if self._ca is not None:
                self._ca = np.resize(self._ca, (grow, self.c))
        ca, ch = prepare_centers(None if a is None else a[None, :], h[None, :])
        self._ch[self.m] = ch[0]
        if self._ca is not None:
            self._ca[self.m] = ca[0]
        self._cn[self.m] = n
        self.row_ids.append(int(row_id))
        self.a32.append(a)
        self.h32.append(h)
        self.n.append(float(n))
        self.m += 1

    def extend(self, other: _Centers) -> None:
        for i in range(other.m):
            self.add(other.row_ids[i], other.a32[i], other.h32[i], other.n[i])

    def min_dist(self, a_R_C: np.ndarray | None, h_R_D: np.ndarray, n_R: np.ndarray) -> np.ndarray:
        """Exact min distance ``[R]`` of rows to these centers (inf when there are none)."""
        if self.m == 0:
            return np.full(h_R_D.shape[0], np.inf)
        d, _ = min_sq_dist(
            a_R_C, h_R_D, n_R, None if self._ca is None else self._ca[: self.m], self._ch[: self.m], self._cn[: self.m]
        )
        return d

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """(row_ids_M, a_M_C or None, h_M_D, n_M) of the centers (quantized float32)."""
        a = None if self.c is None else np.array(self.a32, dtype=np.float32).reshape(self.m, self.c)
        h = np.array(self.h32, dtype=np.float32).reshape(self.m, self.d)
        return np.array(self.row_ids, dtype=np.int64), a, h, np.array(self.n, dtype=np.float64)

    def clear(self) -> None:
        self.m = 0
        self.row_ids, self.a32, self.h32, self.n = [], [], [], []


@dataclass
class _Proposals:
    """A batch of proposals for trials ``first .. first + len - 1`` (one stale state)."""

    first: int
    row_ids: np.ndarray
    w: np.ndarray  # exact D² to the synced centers
    q: np.ndarray
    a: np.ndarray | None
    h: np.ndarray
    n: np.ndarray
    v: np.ndarray  # acceptance uniforms

    def __len__(self) -> int:
        return int(self.row_ids.shape[0])


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise AlscaleError(f"space must be one of {', '.join(SPACES)}; got {short_repr(space)}")


def _init(shards: Shards, space: str, seed: int, round: int) -> tuple[int, tuple, float]:
    infos = shards.call(_op("kpp_init"), space, int(seed), int(round))
    n_cand = sum(i["n"] for i in infos)
    offers = [i["offer"] for i in infos if i["offer"] is not None]
    if not offers:
        return 0, (), 0.0
    if space == "badge":
        first = min(offers, key=lambda o: (-o[0], o[1]))
    else:
        first = min(offers, key=lambda o: (o[0], o[1]))
    dims = {i["dims"] for i in infos if i["n"]}
    if len(dims) > 1:
        raise AlscaleError(f"shards disagree on the factor dimensions: {sorted(map(str, dims))}")
    return n_cand, first, max(i["max_n"] for i in infos)


def _sync(
    shards: Shards, centers: _Centers, e: int, filtered: bool, want_counts: bool = False
) -> tuple[list[int], float, np.ndarray | None, int]:
    row_ids, a, h, n = centers.arrays()
    res = shards.call(_op("kpp_sync"), row_ids, a, h, n, int(e), bool(filtered), bool(want_counts))
    counts = np.sum([r[2] for r in res], axis=0) if want_counts else None
    return [int(r[0]) for r in res], max(r[1] for r in res), counts, sum(int(r[3]) for r in res)


def _fetch(
    shards: Shards, masses: Sequence[int], synced: _Centers, seed: int, round: int, first: int, count: int
) -> _Proposals:
    """Proposals for trials ``first .. first+count-1``: global inverse CDF of the integer weights."""
    trials = np.arange(first, first + count, dtype=np.int64)
    total = sum(masses)
    ends = np.cumsum([0, *masses]).tolist()  # Python ints: exact
    per_shard: list[list[int]] = [[] for _ in masses]
    where: list[tuple[int, int]] = []
    for k in trial_bits(seed, round, trials):
        t = (k * total) >> 104
        s = bisect.bisect_right(ends, t) - 1
        where.append((s, len(per_shard[s])))
        per_shard[s].append(t - ends[s])
    parts = shards.call_each(_op("kpp_propose"), [(np.array(t, dtype=np.int64),) for t in per_shard])
    # Back to trial order: position of each proposal in the shard-order concatenation.
    offsets = np.cumsum([0] + [len(t) for t in per_shard])
    pos = np.array([offsets[s] + i for s, i in where], dtype=np.int64)
    cat = Proposals(*(np.concatenate(field) if field[0] is not None else None for field in zip(*parts)))
    a = None if cat.a_R_C is None else cat.a_R_C[pos]
    h, n = cat.h_R_D[pos], cat.n_R[pos].astype(np.float64)
    return _Proposals(
        first=first,
        row_ids=cat.row_ids_R[pos].astype(np.int64),
        w=synced.min_dist(a, h, n),
        q=cat.q_R[pos].astype(np.int64),
        a=a,
        h=h,
        n=n,
        v=_keyed(seed, round, _S_ACCEPT, trials),
    )


def _rest(shards: Shards, k: int, seed: int, round: int) -> np.ndarray:
    parts = shards.call(_op("kpp_rest"), int(k), int(seed), int(round))
    keys = np.concatenate([p[0] for p in parts])
    ids = np.concatenate([p[1] for p in parts]).astype(np.int64)
    return ids[np.lexsort((ids, keys))[:k]]


def _filter_ok(filtered: bool, max_n: float) -> bool:
    # float32 must hold every value the filter forms (|x| < 2**100 per element already).
    return bool(filtered) and max_n < 2.0**100


#: Consecutive proposals a quota gate may refuse before the rest is filled in keyed random
#: order among the allowed rows (their D² mass is then negligible or zero).
_MAX_REFUSED = 20_000


def seed_exact(
    shards: Shards,
    budget: int,
    *,
    space: str,
    seed: int = 0,
    round: int = 0,
    strategy: str | None = None,
    min_pending: int = 16,
    max_pending: int = 1024,
    filtered: bool = True,
    allow: Any = None,
) -> tuple[Selection, SeedingStats]:
    """Exact k-means++ seeding (D² sampling) of ``min(budget, candidates)`` rows over shards.

    ``allow``: an object with ``prefetch(row_ids)`` (called with every batch of proposals),
    ``ok(row_id) -> bool`` and ``picked(row_id)``: a proposal it refuses is rejected, which
    samples D² restricted to the rows it allows at that step (class quotas). The first
    center must be allowed (restrict the shards to the initially allowed rows).

    Labelled rows must already be excluded. Between two syncs at most
    ``clamp(picks so far, min_pending, max_pending)`` new centers are picked;
    ``max_pending=1`` syncs after every pick. ``filtered=False`` makes the shards hold the
    exact D² (float64 GEMMs) instead of its 6-bit grid bound (float32 GEMMs + exact
    fallback); the law of the picks is D² sampling either way. With ``filtered=False,
    max_pending=1`` pick t is the inverse CDF of the D² weights at ``trial_uniforms(t−1)``
    (unless that trial is rejected, probability < 2^−30): the textbook algorithm.

    Returns:
        The selection (``row_id`` values in pick order; scores = the D² weight of each pick
        when it was drawn, ``inf`` for the first) and the run's :class:`SeedingStats`.
    """
    _check_space(space)
    if min_pending < 1 or max_pending < 1:
        raise AlscaleError(f"min_pending and max_pending must be >= 1; got {min_pending}, {max_pending}")
    name = strategy or ("badge" if space == "badge" else "kmeanspp")
    rt0 = getattr(shards, "round_trips", 0)
    start = _start(shards, space, budget, seed, round, filtered)
    if start is None:
        return _selection([], [], name), SeedingStats(0, 0, 0, getattr(shards, "round_trips", 0) - rt0)
    n_cand, max_n, k, filtered, pending, synced = start
    row0 = pending.row_ids[0]
    picks, scores = [row0], [math.inf]
    chosen = {row0}
    progress.advance()
    if allow is not None:
        allow.prefetch(np.array([row0], np.int64))
        allow.picked(row0)
    bound = _FIRST_BOUND * max_n  # d² <= (|g_i| + |g_c|)² <= 4 max |g|², u <= (1 + 2^-5) d²
    trial = syncs = accepted = exact_rows = 0
    alpha = 1.0
    refused = 0  # proposals the gate refused since the last accepted pick
    while len(picks) < k:
        if allow is not None and allow.done():
            break  # no allowed row is left (quotas full)
        e = scale_exponent(bound, n_cand)
        masses, bound, _, exact_rows = _sync(shards, pending, e, filtered)
        syncs += 1
        synced.extend(pending)
        pending.clear()
        if sum(masses) == 0 or refused > _MAX_REFUSED:  # no D² mass left (among the allowed rows)
            rest = _rest(shards, k - len(picks) if allow is None else n_cand, seed, round)
            if allow is not None:
                allow.prefetch(np.asarray(rest, np.int64))
            for r in (int(r) for r in rest):
                if len(picks) >= k or (allow is not None and allow.done()):
                    break
                if allow is not None:
                    if r in chosen or not allow.ok(r):
                        continue
                    allow.picked(r)
                picks.append(r)
                scores.append(0.0)
            logger.info("%s: D² mass is 0 after %d picks; the rest in keyed random order", name, k - len(rest))
            break
        cap = min(max(min_pending, len(picks)), max_pending, k - len(picks))
        size = _batch_size(cap, alpha, pending.c or 0, pending.d)
        period_trials = period_acc = 0
        batch: _Proposals | None = None
        while len(picks) < k and pending.m < cap:
            if batch is None or trial - batch.first >= len(batch):
                if pending.m:
                    break  # out of proposals: sync what we have, then draw afresh
                batch = _fetch(shards, masses, synced, seed, round, trial, size)
                if allow is not None:
                    allow.prefetch(batch.row_ids)
            i = trial - batch.first
            trial += 1
            period_trials += 1
            row = int(batch.row_ids[i])
            if row in chosen:
                continue
            if allow is not None and not allow.ok(row):
                refused += 1
                if refused > _MAX_REFUSED:
                    break
                continue
            a = None if batch.a is None else batch.a[i : i + 1]
            w = min(float(batch.w[i]), float(pending.min_dist(a, batch.h[i : i + 1], batch.n[i : i + 1])[0]))
            if batch.v[i] * float(batch.q[i]) < math.ldexp(w, e):  # accept with prob w / u
                pending.add(row, None if a is None else a[0], batch.h[i], float(batch.n[i]))
                picks.append(row)
                scores.append(w)
                chosen.add(row)
                progress.advance()
                refused = 0
                if allow is not None:
                    allow.picked(row)
                    if allow.done():
                        break
                period_acc += 1
        accepted += period_acc
        alpha = min(1.0, max(0.02, period_acc / max(period_trials, 1)))
    stats = SeedingStats(
        syncs, trial, accepted, getattr(shards, "round_trips", 0) - rt0, exact_rows=exact_rows
    )
    logger.info(
        "%s: %d picks, %d syncs, %d trials (acceptance %.2f), %d round trips, %d exact-kernel rows",
        name, len(picks), syncs, trial, accepted / max(trial, 1), stats.round_trips, exact_rows,
    )
    return _selection(picks, scores, name), stats


def _start(
    shards: Shards, space: str, budget: int, seed: int, round: int, filtered: bool
) -> tuple[int, float, int, bool, _Centers, _Centers] | None:
    """Common start of both seedings: the first center and what sizes the loop.

    Returns None when there is no candidate, else ``(n_candidates, max ‖g‖², k, filtered,
    centers holding the first center, an empty set of centers)``.
    """
    n_cand, first, max_n = _init(shards, space, seed, round)
    k = min(int(budget), n_cand)
    if k < budget:
        logger.warning("budget %d exceeds the %d unlabelled rows; selecting all of them", budget, n_cand)
    if k == 0:
        return None
    _, row0, a0, h0, n0 = first
    c_dim = None if a0 is None else a0.shape[0]
    with_first, empty = _Centers(c_dim, h0.shape[0]), _Centers(c_dim, h0.shape[0])
    with_first.add(row0, a0, h0, n0)
    return n_cand, max_n, k, _filter_ok(filtered, max_n), with_first, empty


def _batch_size(cap: int, alpha: float, c: int, d: int) -> int:
    """Proposals to fetch for ``cap`` picks at acceptance ``alpha`` (bounded in bytes)."""
    want = math.ceil(1.25 * cap / alpha) + 16
    return max(16, min(want, _PROPOSAL_BYTES // (4 * (c + d) + 32)))


def _selection(picks: Sequence[int], scores: Sequence[float], name: str) -> Selection:
    return Selection(
        indices_B=np.array(picks, dtype=np.int64), scores_B=np.array(scores, dtype=np.float64), strategy=name
    )


def seed_parallel(
    shards: Shards,
    budget: int,
    *,
    space: str,
    oversampling: float = 0.5,
    rounds: int = 5,
    seed: int = 0,
    round: int = 0,
    strategy: str | None = None,
    filtered: bool = True,
) -> tuple[Selection, SeedingStats]:
    """k-means‖ seeding (Bahmani et al., VLDB 2012) of ``min(budget, candidates)`` rows.

    ``ℓ = oversampling · k`` rows are expected per round; after ``rounds`` rounds (more while
    there are fewer than k candidates) each candidate is weighted by the number of rows it
    was the last to bring closer (the nearest candidate up to the 2^−5 weight grid), and
    the candidates are reduced to k by weighted k-means++ at the coordinator (first pick:
    the BADGE rule, or ∝ weight for plain k-means++). Shard-count invariant like
    :func:`seed_exact`; approximate: not the k-means++ distribution.
    """
    _check_space(space)
    name = strategy or ("badge_parallel" if space == "badge" else "kmeans_parallel")
    rt0 = getattr(shards, "round_trips", 0)
    start = _start(shards, space, budget, seed, round, filtered)
    if start is None:
        return _selection([], [], name), SeedingStats(0, 0, 0, getattr(shards, "round_trips", 0) - rt0)
    n_cand, max_n, k, filtered, batch, cand = start
    ell = float(oversampling) * k
    bound = _FIRST_BOUND * max_n
    r = syncs = exact_rows = 0
    while True:
        e = scale_exponent(bound, n_cand)
        last = r >= rounds and cand.m + batch.m >= k
        masses, bound, counts, exact_rows = _sync(shards, batch, e, filtered, want_counts=True)
        syncs += 1
        cand.extend(batch)
        batch.clear()
        mass = sum(masses)
        if last or mass == 0 or r >= rounds + 20:
            break
        parts = shards.call(_op("kpar_oversample"), ell, mass, int(e), int(seed), int(round), int(r))
        r += 1
        for ids, a, h, n in parts:
            for i in range(ids.shape[0]):
                batch.add(int(ids[i]), None if a is None else a[i], h[i], float(n[i]))
    assert counts is not None
    picks, scores = _weighted_kpp(cand, counts.astype(np.float64), k, space, seed, round)
    if len(picks) < k:  # every row coincides with a candidate: fill in keyed order
        rest = _rest(shards, k - len(picks), seed, round)
        picks.extend(int(x) for x in rest)
        scores.extend([0.0] * rest.shape[0])
    stats = SeedingStats(
        syncs, cand.m, len(picks), getattr(shards, "round_trips", 0) - rt0, rounds=r, exact_rows=exact_rows
    )
    logger.info(
        "%s: %d candidates from %d rounds -> %d picks, %d round trips", name, cand.m, r, len(picks), stats.round_trips
    )
    return _selection(picks, scores, name), stats


def _weighted_kpp(
    cand: _Centers, weight_M: np.ndarray, k: int, space: str, seed: int, round: int
) -> tuple[list[int], list[float]]:
    """Weighted k-means++ over the candidates (coordinator-local, exact kernels)."""
    row_ids, a32, h32, n = cand.arrays()
    m = row_ids.shape[0]
    a64 = None if a32 is None else a32.astype(np.float64)
    h64 = h32.astype(np.float64)
    ca, ch = prepare_centers(a32, h32)
    d_M = np.full(m, np.inf)
    taken = np.zeros(m, dtype=bool)
    u = _keyed(seed, round, _S_FINAL, np.arange(k, dtype=np.int64))
    picks: list[int] = []
    scores: list[float] = []
    j = 0 if space == "badge" else _inverse_cdf(weight_M, u[0])  # candidate 0: the BADGE first center
    while True:
        picks.append(int(row_ids[j]))
        scores.append(float(d_M[j]))
        taken[j] = True
        if len(picks) == min(k, m):
            break
        dj, _ = min_sq_dist(
            a64, h64, n, None if ca is None else ca[j : j + 1], ch[j : j + 1], n[j : j + 1]
        )
        np.minimum(d_M, dj, out=d_M)
        d_M[taken] = 0.0
        p_M = weight_M * d_M
        if not p_M.sum() > 0:
            free = np.flatnonzero(~taken)
            key = _keyed(seed, round, _S_REST, row_ids[free])
            for f in free[np.lexsort((row_ids[free], key))][: k - len(picks)]:
                picks.append(int(row_ids[f]))
                scores.append(0.0)
            break
        j = _inverse_cdf(p_M, u[len(picks)])
    return picks, scores


def _inverse_cdf(p_M: np.ndarray, u: float) -> int:
    cum = np.cumsum(p_M)
    j = int(np.searchsorted(cum, u * cum[-1], side="right"))
    if j >= p_M.shape[0] or p_M[j] <= 0:  # u * total rounded up to the total
        j = int(np.flatnonzero(p_M > 0)[-1])
    return j


# ---------------------------------------------------------------------------------------
# Registry entry points: (shards, budget, *, options, seed, round) -> Selection.
# ---------------------------------------------------------------------------------------
def check_parallel_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate k-means‖ options: ``oversampling`` > 0 (ℓ = oversampling · B), ``rounds`` >= 1."""
    over, rounds = options.get("oversampling"), options.get("rounds")
    if isinstance(over, bool) or not isinstance(over, (int, float, np.integer, np.floating)) or not (
        math.isfinite(over) and over > 0
    ):
        raise AlscaleError(f"option oversampling must be a positive number (ℓ = oversampling * budget); got {short_repr(over)}")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise AlscaleError(f"option rounds must be an integer >= 1; got {short_repr(rounds)}")
    return {**options, "oversampling": float(over), "rounds": int(rounds)}


def select_kmeanspp(
    shards: Shards, budget: int, *, options: dict[str, Any] | None = None, seed: int = 0, round: int = 0
) -> Selection:
    """Registry entry ``kmeanspp``: exact k-means++ seeding over the embeddings."""
    return seed_exact(shards, budget, space="embedding", seed=seed, round=round, strategy="kmeanspp")[0]


def select_kmeans_parallel(
    shards: Shards, budget: int, *, options: dict[str, Any] | None = None, seed: int = 0, round: int = 0
) -> Selection:
    """Registry entry ``kmeans_parallel``: k-means‖ over the embeddings."""
    opts = options or {}
    return seed_parallel(
        shards, budget, space="embedding", oversampling=opts.get("oversampling", 0.5),
        rounds=opts.get("rounds", 5), seed=seed, round=round, strategy="kmeans_parallel",
    )[0]


# -- registry spec -----------------------------------------------------------------------
@dataclass(frozen=True)
class ParallelOptions(_spec.StrategyOptions):
    """k-means‖ options: ``oversampling`` (ℓ = oversampling · B) and ``rounds``."""

    oversampling: float = 0.5
    rounds: int = 5

    @classmethod
    def check(cls, options: dict[str, Any]) -> dict[str, Any]:
        return check_parallel_options(options)


_NEEDS = _spec.Needs(log_probs=False, embeddings=True)
_SUPPORTS = _spec.Supports(keeps=("embeddings",))
SPECS = (
    _spec.StrategySpec(
        "kmeanspp", "loop",
        "k-means++ seeding of the embeddings, exact D² sampling (Arthur & Vassilvitskii, SODA 2007)",
        needs=_NEEDS, supports=_SUPPORTS, aliases=("kmeans++", "k_means++", "k_means_pp"), select=select_kmeanspp),
    _spec.StrategySpec(
        "kmeans_parallel", "loop", "k-means|| seeding of the embeddings (approximate; Bahmani et al., VLDB 2012)",
        options_type=ParallelOptions, needs=_NEEDS, supports=_SUPPORTS, aliases=("kmeans||", "k_means||"),
        select=select_kmeans_parallel),
)

