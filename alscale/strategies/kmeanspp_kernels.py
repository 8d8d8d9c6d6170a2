"""Numeric kernels of exact sharded k-means++ / BADGE seeding: arrays in, arrays out.

Fixed-point factors whose float64 dot products are exact in any summation order, the
exact and the float32-filtered (rigorously bounded) min-distance kernels, the 6-bit weight
grid, and the keyed trial randomness. The shard ops that use them are in
:mod:`alscale.strategies.kmeanspp_shard`, the loops and the argument for why the result does
not depend on the shard count in :mod:`alscale.strategies.kmeanspp`. The kernels assume
valid input.
"""

from __future__ import annotations

import math

import numpy as np

from alscale.strategies import noise

# Streams of keyed randomness, mixed into the `round` key: (round << 8) | stream.
_S_FIRST = 1  # plain k-means++ first center, keyed by row_id
_S_HI = 2  # trial target, high 52 bits, keyed by trial number
_S_LO = 3  # trial target, low 52 bits
_S_ACCEPT = 4  # trial acceptance
_S_REST = 5  # order of the rest when the D² mass is 0, keyed by row_id
_S_FINAL = 6  # k-means‖: weighted k-means++ on the candidates, keyed by pick number
_S_OVERSAMPLE = 16  # k-means‖ round r uses stream 16 + r, keyed by row_id

_E_MIN = -100  # rows whose largest |value| is below 2**-100 quantize with that unit
_ROW_ELEMS = 1 << 21  # elements per chunk of row-wise work (16 MB of float64: heap-reused)
_GEMM_ELEMS = 1 << 20  # rows * centers per distance chunk (8 MB of float64)


def fixed_point_bits(dim: int) -> int:
    """Fraction bits ``F`` for vectors of length ``dim`` (≤ 24, so values are float32-exact).

    With ``|x_k| ≤ 2^E`` stored as multiples of ``2^(E−F)``, every partial sum of a dot
    product of two such vectors is an integer multiple of ``2^(E_x+E_y−2F)`` of size at
    most ``dim · 2^(2F) ≤ 2^53`` units: exactly representable in float64.
    """
    return min(24, (53 - max(dim - 1, 1).bit_length()) // 2)


def quantize_rows(x_N_K: np.ndarray, bits: int) -> np.ndarray:
    """Round each row to ``bits`` fraction bits relative to its largest power of two.

    Args:
        x_N_K: finite values ``[N, K]`` (any float dtype), below ``2**100`` in magnitude.
        bits: fraction bits ``F`` (:func:`fixed_point_bits` of K).

    Returns:
        float32 ``[N, K]``; every value is ``m · 2^(E_n − F)`` with integer ``|m| ≤ 2^F``
        and ``2^(E_n−1) ≤ max_k |x_nk| < 2^(E_n)`` (exactly representable in float32).
    """
    return quantize_rows_(np.array(x_N_K, dtype=np.float64), bits).astype(np.float32)


def quantize_rows_(x_T_K: np.ndarray, bits: int) -> np.ndarray:
    """:func:`quantize_rows` in place on a float32 or float64 array (returns it).

    Every step is exact in either dtype: scaling by powers of two, ``rint`` of numbers
    below ``2^24``; a product that underflows is below 1/2 and rounds to 0 anyway.
    """
    if x_T_K.shape[1] == 0 or x_T_K.shape[0] == 0:
        return x_T_K
    _, e_T = np.frexp(np.maximum(np.max(x_T_K, axis=1), -np.min(x_T_K, axis=1)))
    if e_T.max() > 100:
        raise ValueError("values of magnitude 2**100 or more cannot be used as k-means++ factors")
    scale_T = np.ldexp(1.0, bits - np.maximum(e_T, _E_MIN)).astype(x_T_K.dtype)[:, None]
    x_T_K *= scale_T
    np.rint(x_T_K, out=x_T_K)
    x_T_K /= scale_T
    return x_T_K


def exact_sq_norms(q_N_K: np.ndarray) -> np.ndarray:
    """Squared norms ``[N]`` (float64) of quantized rows: exact, in any summation order."""
    return np.einsum("nk,nk->n", q_N_K, q_N_K, dtype=np.float64)


def prepare_centers(a_M_C: np.ndarray | None, h_M_D: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Center factors as float64 GEMM operands, the ``−2`` folded in (exactly).

    BADGE: ``(−2a, h)``; plain: ``(None, −2h)``. Inputs are quantized float32 rows.
    """
    if a_M_C is None:
        return None, -2.0 * h_M_D.astype(np.float64)
    return -2.0 * a_M_C.astype(np.float64), h_M_D.astype(np.float64)


def min_sq_dist(
    a_T_C: np.ndarray | None,
    h_T_D: np.ndarray,
    n_T: np.ndarray,
    ca_M_C: np.ndarray | None,
    ch_M_D: np.ndarray,
    cn_M: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Min squared (gradient-)embedding distance of T rows to M centers, and its argmin.

    Rows: quantized ``a_T_C`` (None for plain k-means++) and ``h_T_D``, squared norms
    ``n_T`` (``‖a‖²‖h‖²`` or ``‖h‖²``). Centers: :func:`prepare_centers` output and their
    squared norms ``cn_M``. Computes ``t_m = n_m + (−2 a·a_m)(h·h_m)`` (BADGE) or
    ``n_m + (−2 h·h_m)``, then ``d = max(n + min_m t_m, 0)``; rounding is monotone, so this
    is the min over centers of ``max(n + t_m, 0)``. The dot products are exact (see
    :func:`fixed_point_bits`), so ``d`` depends on the row and the centers only.

    Returns:
        ``(d_T float64, j_T int64)``: the distance and the first center attaining ``min t``.
    """
    t_T_M = np.asarray(h_T_D, dtype=np.float64) @ ch_M_D.T
    if a_T_C is not None:
        assert ca_M_C is not None
        t_T_M *= np.asarray(a_T_C, dtype=np.float64) @ ca_M_C.T
    t_T_M += cn_M
    j_T = np.argmin(t_T_M, axis=1)
    d_T = n_T + t_T_M[np.arange(t_T_M.shape[0]), j_T]
    np.maximum(d_T, 0.0, out=d_T)
    return d_T, j_T


def grid_ceil(x_N: np.ndarray) -> np.ndarray:
    """Round non-negative values up to 6 significant bits: ``ceil(64 m) · 2^(e−6)`` for ``x = m·2^e``.

    Monotone, exact (powers of two and ``ceil`` only), ``x ≤ grid_ceil(x) ≤ x·(1 + 2^−5)``,
    ``grid_ceil(0) = 0``. Shards hold ``grid_ceil(D²)`` as their proposal weights, so a value
    needs to be known only to within its grid cell (see :func:`bound_min_sq_dist`).
    """
    m_N, e_N = np.frexp(x_N)
    return np.ldexp(np.ceil(np.ldexp(m_N, 6)), e_N - 6)


def filter_kappa(c: int | None, d: int) -> float:
    """Relative error bound ``κ`` of :func:`bound_min_sq_dist` for factor lengths C and D.

    A float32 dot product of length K errs by at most ``γ_K Σ|x_k y_k|`` in any summation
    order, ``γ_K = K u / (1 − K u)``, ``u = 2^−24`` (Higham, *Accuracy and Stability of
    Numerical Algorithms*, 2002, §3.1). With Cauchy–Schwarz the float32 value of
    ``t_c = (a·(−2a_c))(h·h_c) + n_c`` errs by at most ``κ₀ (n + n_c)``, ``κ₀ = γ_C + γ_D +
    γ_C γ_D + 4u`` (three float32 roundings); ``κ = 2κ₀`` leaves room for the float64 steps.
    """
    u = 2.0**-24

    def gamma(k: int) -> float:
        return k * u / (1.0 - k * u)

    g_c = 0.0 if c is None else gamma(c)
    g_d = gamma(d)
    return 2.0 * (g_c + g_d + g_c * g_d + 4.01 * u) + 2.0**-40


_ABS_SLACK = 2.0**-100  # covers float32 underflow in the filter


def bound_min_sq_dist(
    a_T_C: np.ndarray | None,
    h_T_D: np.ndarray,
    n_T: np.ndarray,
    fa_M_C: np.ndarray | None,
    fh_M_D: np.ndarray,
    fn_M: np.ndarray,
    cn_M: np.ndarray,
    kappa: float,
    second: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Float32 bounds on the exact :func:`min_sq_dist` of T rows to M centers.

    Rows: quantized float32 factors and exact norms ``n_T``. Centers: float32 ``(−2a, h)``
    (BADGE) or ``(None, −2h)`` (exact scalings), ``fn_M = float32((1−κ)·n_c)`` and the exact
    ``cn_M``. With ``ŷ_c`` the float32 value of ``(a·(−2a_c))(h·h_c) + (1−κ)n_c``,
    ``lo = (1−κ)n + min_c ŷ_c`` is at most every exact ``d_c``, and ``hi = lo + 2κ(n + n_j)``
    (``j`` the argmin) is at least ``d_j`` ≥ the exact minimum.

    Returns:
        ``(lo_T, hi_T, j_T, lo2_T)``: float64 bounds, the argmin of the float32 values, and
        with ``second`` the same lower bound over the other centers (``inf`` if M = 1).
    """
    y_T_M = h_T_D @ fh_M_D.T
    if a_T_C is not None:
        assert fa_M_C is not None
        y_T_M *= a_T_C @ fa_M_C.T
    y_T_M += fn_M
    r_T = np.arange(y_T_M.shape[0])
    j_T = np.argmin(y_T_M, axis=1)
    base_T = n_T * (1.0 - kappa) - _ABS_SLACK
    lo_T = base_T + y_T_M[r_T, j_T]
    hi_T = lo_T + 2.0 * kappa * (n_T + cn_M[j_T]) + 2.0 * _ABS_SLACK
    lo2_T = None
    if second:
        y_T_M[r_T, j_T] = np.inf
        lo2_T = base_T + y_T_M.min(axis=1)
    return lo_T, hi_T, j_T, lo2_T


def scale_exponent(bound: float, n_rows: int) -> int:
    """``e`` such that ``Σ ceil(w · 2^e) < 2^62`` for ``n_rows`` weights ``0 ≤ w ≤ bound``."""
    _, x = math.frexp(bound)  # bound < 2**x
    return 62 - x - max(n_rows - 1, 1).bit_length()


def trial_bits(seed: int, round: int, trials_R: np.ndarray) -> list[int]:
    """104 keyed random bits per trial number (two 52-bit keyed uniforms), as Python ints."""
    hi = _bits52(seed, round, _S_HI, trials_R)
    lo = _bits52(seed, round, _S_LO, trials_R)
    return [(int(h) << 52) | int(low) for h, low in zip(hi, lo)]


def trial_uniforms(seed: int, round: int, trials_R: np.ndarray) -> np.ndarray:
    """The uniforms ``K_n / 2^104`` behind trials ``n`` (float64; for oracles and tests)."""
    return np.array([math.ldexp(k, -104) for k in trial_bits(seed, round, trials_R)], dtype=np.float64)


def keyed_round(round: int, stream: int) -> int:
    """The ``round`` key of stream ``stream`` of round ``round``: ``(round << 8) | stream``."""
    return (int(round) << 8) | stream


def _keyed(seed: int, round: int, stream: int, keys: np.ndarray) -> np.ndarray:
    return noise.keyed_uniform(seed, keyed_round(round, stream), np.asarray(keys, dtype=np.int64))


def _bits52(seed: int, round: int, stream: int, keys: np.ndarray) -> np.ndarray:
    # keyed_uniform returns (k + 0.5) / 2**52; both steps below are exact.
    return (_keyed(seed, round, stream, keys) * float(1 << 52) - 0.5).astype(np.int64)


def seeding_cost(
    a_N_C: np.ndarray | None, h_N_D: np.ndarray, centers: np.ndarray, chunk: int = 16384
) -> float:
    """k-means cost ``Σ_i min_c ‖g_i − g_c‖²`` of centers (row positions) over all rows.

    A float32 reference for benchmarks (not part of the selection): ``a_N_C`` is the BADGE
    factor (None for plain embeddings).
    """
    h = np.asarray(h_N_D, dtype=np.float32)
    hc = h[centers]
    nh, nhc = np.einsum("nd,nd->n", h, h), np.einsum("md,md->m", hc, hc)
    if a_N_C is not None:
        a = np.asarray(a_N_C, dtype=np.float32)
        ac = a[centers]
        na, nac = np.einsum("nc,nc->n", a, a), np.einsum("mc,mc->m", ac, ac)
    total = 0.0
    for lo in range(0, h.shape[0], chunk):
        hi = min(lo + chunk, h.shape[0])
        g = h[lo:hi] @ hc.T
        if a_N_C is None:
            d = nh[lo:hi, None] + nhc[None, :] - 2 * g
        else:
            g *= a[lo:hi] @ ac.T
            d = (na * nh)[lo:hi, None] + (nac * nhc)[None, :] - 2 * g
        total += float(np.maximum(d.min(axis=1), 0).astype(np.float64).sum())
    return total


def gradient_factors(log_probs_N_K_C: np.ndarray) -> np.ndarray:
    """BADGE's class factor ``a = p − onehot(argmax p)``, ``p`` = mean_k exp(log_probs).

    Args:
        log_probs_N_K_C: natural-log probabilities ``[N, K, C]``.

    Returns:
        float64 ``[N, C]``; ``‖a ⊗ h‖ = ‖a‖·‖h‖`` is BADGE's gradient-embedding norm.
    """
    if log_probs_N_K_C.shape[1] == 1:
        p_N_C = np.array(log_probs_N_K_C[:, 0, :], dtype=np.float64)
        np.exp(p_N_C, out=p_N_C)
    else:
        p_N_C = np.exp(np.asarray(log_probs_N_K_C, dtype=np.float64)).mean(axis=1)
    y_N = np.argmax(p_N_C, axis=1)
    p_N_C[np.arange(p_N_C.shape[0]), y_N] -= 1.0
    return p_N_C
