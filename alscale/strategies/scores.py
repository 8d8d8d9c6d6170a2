"""Acquisition-score kernels: natural-log probabilities in, one float64 score per row out.

Input everywhere is ``log_probs_N_K_C``: *natural-log probabilities* (``log_softmax`` of the
model's logits, not logits and not probabilities) of N pool rows under K MC-dropout samples
or committee members over C classes; K = 1 for a single deterministic pass. float32 and
float64 are used as they are (other float widths are converted chunk by chunk); ``-inf``
(probability exactly 0) is allowed; NaN, +inf, values above 1e-3 (logits or probabilities)
and rows whose probabilities do not sum to about 1 (checked on an evenly spaced sample of
rows) are rejected with an :class:`~alscale.errors.AlscaleError` naming row, sample, class.

Every public score returns float64 ``scores_N`` where HIGHER = picked first (margin is
reported as ``1 - margin`` for that reason; :func:`raw_margin` gives the textbook value).
Notation: ``p_k`` is sample k's class distribution, ``p̄ = mean_k p_k`` the predictive
distribution, ``H`` the Shannon entropy in nats.

Memory and speed: rows are processed in chunks of about ``_CHUNK_ELEMENTS`` values, so a
K = 100 pool of a million rows never holds more than a few chunk-sized temporaries.
Exponentials run in the input precision (float32 stays float32); every reduction
accumulates in float64 (``np.einsum(..., dtype=np.float64)``). A row's score depends only
on that row, and the result is bit-for-bit the same whatever the chunk size.

Public functions validate their arguments and raise :class:`~alscale.errors.AlscaleError`;
the private ``_*_kernel`` functions assume a valid, finite, C-contiguous float32/float64
chunk of shape ``[n, K, C]``.

The last section holds the pure key transforms of stochastic batch acquisition (Kirsch,
Farquhar, Atighehchian, Jesson, Branchaud-Charron, Gal, "Stochastic Batch Acquisition: A
Simple Baseline for Deep Active Learning", TMLR 2023): the top-B rows by key are a sample
of B rows without replacement (Gumbel-top-k) with the stated probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from alscale.errors import AlscaleError, short_repr

__all__ = [
    "bald",
    "consensus_kl",
    "entropy",
    "expected_entropy",
    "least_confidence",
    "margin",
    "mean_std",
    "power_keys",
    "predictive_log_probs",
    "raw_margin",
    "softmax_keys",
    "softrank_keys",
    "variation_ratios",
    "vote_entropy",
]

# About 2**17 values per chunk (512 KiB in float32): big enough to amortise numpy's
# per-call overhead, small enough that a chunk and its temporaries stay in cache
# (measured fastest of 2**16 .. 2**22 on a 2-core CPU).
_CHUNK_ELEMENTS = 1 << 17
# Stand-in for log(0) = -inf inside the score kernels: exp(_LOG_FLOOR) == 0 and
# 0 * _LOG_FLOOR == 0 in float32 and float64, which makes every 0 * log 0 term vanish.
_LOG_FLOOR = -1e30
# Input checks. A value above _MAX_LOG_PROB is a probability above 1: logits or
# probabilities were passed. Evenly spaced sample rows must be normalised to within
# _NORM_TOL in log space (probabilities summing to 0.78 .. 1.28): loose on purpose, so
# that log-probs stored in float16 or from rounded probabilities pass, while logits and
# grossly unnormalised inputs are rejected with a message.
_MAX_LOG_PROB = 1e-3
_NORM_TOL = 0.25
# How many rows (evenly spaced) the normalisation check looks at.
_NORM_CHECK_ROWS = 512
_TINY = np.finfo(np.float64).tiny
# Below these means of exp(log p) (by the input's itemsize) the fast log-mean loses
# relative precision to subnormals, and predictive log-probs are recomputed shifted.
_SMALL_MEAN = {4: 1e-30, 8: 1e-290}

Kernel = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------
# Validation and the chunk driver
# --------------------------------------------------------------------------------------


def _check_log_probs(log_probs_N_K_C: object, name: str = "log_probs") -> bool:
    """Validate a ``[N, K, C]`` log-prob array; return whether it contains ``-inf``.

    Checks type, rank, K >= 1, C >= 2, floating dtype, no NaN / +inf, no value above
    ``_MAX_LOG_PROB`` (full passes: one max and one min), and that an evenly spaced sample
    of rows is normalised (logsumexp over classes within ``_NORM_TOL`` of 0), which
    rejects logits and probabilities with a message instead of a silently wrong score.
    """
    x = log_probs_N_K_C
    if not isinstance(x, np.ndarray):
        raise AlscaleError(f"{name} must be a numpy array of shape [N, K, C]; got {type(x).__name__}")
    if x.ndim != 3:
        hint = " (add a K axis for a single pass: log_probs[:, None, :])" if x.ndim == 2 else ""
        raise AlscaleError(f"{name} must be [N, K, C]; got shape {x.shape}{hint}")
    n, k, c = x.shape
    if k < 1:
        raise AlscaleError(f"{name} must have at least one sample (K >= 1); got shape {x.shape}")
    if c < 2:
        raise AlscaleError(f"{name} must have at least 2 classes (C >= 2); got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise AlscaleError(
            f"{name} must be a floating array of natural-log probabilities; got dtype {x.dtype}"
        )
    if n == 0:
        return False
    hi = x.max()
    if np.isnan(hi):
        where = _first(np.isnan(x))
        raise AlscaleError(f"{name} holds NaN at {where}; the model output is invalid there")
    if hi > _MAX_LOG_PROB:
        where = _first(x == hi)
        raise AlscaleError(
            f"{name} must be natural-log probabilities (all <= 0); found {float(hi):g} at {where}: "
            "pass log_softmax(logits), not logits or probabilities"
        )
    has_neg_inf = bool(np.isneginf(x.min()))
    rows = np.linspace(0, n - 1, min(n, _NORM_CHECK_ROWS)).astype(np.int64)  # nondecreasing
    rows = rows[np.diff(rows, prepend=-1) > 0]  # distinct (np.unique would import numpy.ma: ~5 ms once)
    sample = x[rows].astype(np.float64)
    top = sample.max(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = top[..., 0] + np.log(np.exp(sample - top).sum(axis=2))  # [rows, K]
    bad = ~(np.abs(lse) <= _NORM_TOL)  # also catches a sample that is -inf everywhere
    if bad.any():
        i, j = np.argwhere(bad)[0]
        total = float(np.exp(lse[i, j])) if np.isfinite(lse[i, j]) else 0.0
        raise AlscaleError(
            f"{name} must be normalised log-probabilities (logsumexp over classes = 0); at row "
            f"{int(rows[i])}, sample {int(j)} the probabilities sum to {total:.6g}: "
            "pass log_softmax(logits), not logits or probabilities"
        )
    return has_neg_inf


def _first(mask_N_K_C: np.ndarray) -> str:
    """'row i, sample k, class c' of the first True entry."""
    i, k, c = (int(v) for v in np.argwhere(mask_N_K_C)[0])
    return f"row {i}, sample {k}, class {c}"


def _check_chunk_rows(chunk_rows: object) -> None:
    if chunk_rows is None:
        return
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise AlscaleError(f"chunk_rows must be a positive integer or None; got {short_repr(chunk_rows)}")


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """float32 and float64 are kept; narrower floats run as float32, wider as float64."""
    if dtype in (np.float32, np.float64):
        return np.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize < 4 else np.dtype(np.float64)


def _rows_per_chunk(k: int, c: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return int(chunk_rows)
    return max(1, _CHUNK_ELEMENTS // (k * c))


def _map_rows(
    kernel: Kernel,
    log_probs_N_K_C: np.ndarray,
    chunk_rows: int | None,
    *,
    clip: bool,
    tail: tuple[int, ...] = (),
) -> np.ndarray:
    """Apply ``kernel`` to consecutive row chunks; returns float64 ``[N, *tail]``.

    Each chunk is made C-contiguous in the working dtype; with ``clip`` its ``-inf`` values
    are replaced by ``_LOG_FLOOR`` so that kernels only ever see finite numbers.
    """
    n, k, c = log_probs_N_K_C.shape
    dtype = _work_dtype(log_probs_N_K_C.dtype)
    step = _rows_per_chunk(k, c, chunk_rows)
    out = np.empty((n, *tail), dtype=np.float64)
    for start in range(0, n, step):
        stop = min(start + step, n)
        x_n_K_C = np.ascontiguousarray(log_probs_N_K_C[start:stop], dtype=dtype)
        if clip:
            x_n_K_C = np.maximum(x_n_K_C, dtype.type(_LOG_FLOOR))
        out[start:stop] = kernel(x_n_K_C)
    return out


def _score(kernel: Kernel, log_probs_N_K_C: np.ndarray, chunk_rows: int | None) -> np.ndarray:
    """Validate, then run a score kernel chunk by chunk."""
    has_neg_inf = _check_log_probs(log_probs_N_K_C)
    _check_chunk_rows(chunk_rows)
    return _map_rows(kernel, log_probs_N_K_C, chunk_rows, clip=has_neg_inf)


# --------------------------------------------------------------------------------------
# Shared pieces (private; inputs finite)
# --------------------------------------------------------------------------------------


def _mean_probs(x_n_K_C: np.ndarray, p_n_K_C: np.ndarray | None = None) -> np.ndarray:
    """``p̄ = mean_k exp(x)`` as float64 ``[n, C]`` (exp in the input precision)."""
    k = x_n_K_C.shape[1]
    p = np.exp(x_n_K_C) if p_n_K_C is None else p_n_K_C
    if k == 1:
        return p[:, 0, :].astype(np.float64)
    return np.einsum("nkc->nc", p, dtype=np.float64) / k


def _entropy_of_probs(p_n_C: np.ndarray) -> np.ndarray:
    """``H[p] = -sum_c p_c log p_c`` in nats for float64 ``[n, C]``; 0 log 0 = 0."""
    log_p = np.log(np.maximum(p_n_C, _TINY))
    return np.maximum(-np.einsum("nc,nc->n", p_n_C, log_p), 0.0)


def _sum_p_log_p(x_n_K_C: np.ndarray, p_n_K_C: np.ndarray) -> np.ndarray:
    """``sum_k sum_c p_kc log p_kc`` per row, float64 ``[n]`` (= -K * mean_k H[p_k])."""
    return np.einsum("nkc,nkc->n", p_n_K_C, x_n_K_C, dtype=np.float64)


def _vote_counts(x_n_K_C: np.ndarray) -> np.ndarray:
    """Per row, how many of the K samples vote for each class: int64 ``[n, C]``.

    A sample's vote is its argmax class; ties go to the lowest class index.
    """
    n, _, c = x_n_K_C.shape
    votes_n_K = x_n_K_C.argmax(axis=2)
    flat = (votes_n_K + c * np.arange(n)[:, None]).ravel()
    return np.bincount(flat, minlength=n * c).reshape(n, c)


# --------------------------------------------------------------------------------------
# Kernels (private): float32/float64 [n, K, C] finite C-contiguous -> float64 [n]
# --------------------------------------------------------------------------------------


def _log_mean_probs_kernel(x_n_K_C: np.ndarray, p_n_K_C: np.ndarray | None = None) -> np.ndarray:
    """``log mean_k exp(x)`` as float64 ``[n, C]``; ``-inf`` where every sample has p = 0.

    Log-probs are <= 0, so ``exp`` cannot overflow and the mean is taken directly (exp in
    the input precision, sum in float64). Only where a mean falls below the range in which
    the input precision is exact (float32: 1e-30) are those rows redone as
    ``logsumexp_k(x) - log K`` with the max shifted out.
    """
    k = x_n_K_C.shape[1]
    if k == 1:
        return x_n_K_C[:, 0, :].astype(np.float64)
    mean_n_C = _mean_probs(x_n_K_C, p_n_K_C)
    with np.errstate(divide="ignore"):
        out_n_C = np.log(mean_n_C)
    small = (mean_n_C < _SMALL_MEAN[x_n_K_C.dtype.itemsize]).any(axis=1)
    if small.any():
        out_n_C[small] = _shifted_log_mean_probs(x_n_K_C[small])
    return out_n_C


def _shifted_log_mean_probs(x_n_K_C: np.ndarray) -> np.ndarray:
    """``logsumexp_k(x) - log K`` with the per-class max shifted out; float64 ``[n, C]``."""
    k = x_n_K_C.shape[1]
    top_n_C = x_n_K_C.max(axis=1).astype(np.float64)
    top_n_C[np.isneginf(top_n_C)] = 0.0  # a class with p = 0 in every sample stays -inf
    shifted_n_K_C = x_n_K_C.astype(np.float64) - top_n_C[:, None, :]
    sums_n_C = np.einsum("nkc->nc", np.exp(shifted_n_K_C))
    with np.errstate(divide="ignore"):
        return top_n_C + (np.log(sums_n_C) - math.log(k))


def _least_confidence_kernel(x_n_K_C: np.ndarray) -> np.ndarray:
    if x_n_K_C.shape[1] == 1:  # 1 - exp(max log p), exactly via expm1
        return np.maximum(-np.expm1(x_n_K_C[:, 0, :].max(axis=1).astype(np.float64)), 0.0)
    return np.maximum(1.0 - _mean_probs(x_n_K_C).max(axis=1), 0.0)


def _raw_margin_kernel(x_n_K_C: np.ndarray) -> np.ndarray:
    c = x_n_K_C.shape[2]
    if x_n_K_C.shape[1] == 1:  # the top two log-probs, exponentiated in float64
        top2_n_2 = np.exp(np.partition(x_n_K_C[:, 0, :], c - 2, axis=1)[:, c - 2 :].astype(np.float64))
    else:
        top2_n_2 = np.partition(_mean_probs(x_n_K_C), c - 2, axis=1)[:, c - 2 :]
    return np.clip(top2_n_2[:, 1] - top2_n_2[:, 0], 0.0, 1.0)


def _margin_kernel(x_n_K_C: np.ndarray) -> np.ndarray:
    return 1.0 - _raw_margin_kernel(x_n_K_C)


def _entropy_kernel(x_n_K_C: np.ndarray) -> np.ndarray:
    if x_n_K_C.shape[1] == 1:  # -sum p log p straight from the given log p
        x_n_C = x_n_K_C[:, 0, :]
        return np.maximum(-np.einsum("nc,nc->n", np.exp(x_n_C), x_n_C, dtype=np.float64), 0.0)
    return _entropy_of_probs(_mean_probs(x_n_K_C))


def _expected_entropy_kernel(x_n_K_C: np.ndarray) -> np.ndarray:
    k = x_n_K_C.shape[1]
    return np.maximum(-_sum_p_log_p(x_n_K_C, np.exp(x_n_K_C)) / k, 0.0)


def _bald_kernel(x_n_K_C: np.ndarray) -> np.ndarray:
    k = x_n_K_C.shape[1]
    if k == 1:
        return np.zeros(x_n_K_C.shape[0])
    p = np.exp(x_n_K_C)
    h_n = _entropy_of_probs(_mean_probs(x_n_K_C, p))
    expected_h_n = -_sum_p_log_p(x_n_K_C, p) / k
    return np.maximum(h_n - expected_h_n, 0.0)


def _variation_ratios_kernel(x_n_K_C: np.ndarray) -> np.ndarray:
    k = x_n_K_C.shape[1]
    if k == 1:
        return np.zeros(x_n_K_C.shape[0])
    return 1.0 - _vote_counts(x_n_K_C).max(axis=1) / k


def _mean_std_kernel(x_n_K_C: np.ndarray) -> np.ndarray:
    n, k, c = x_n_K_C.shape
    if k == 1:
        return np.zeros(n)
    p = np.exp(x_n_K_C)
    dev_n_K_C = p - _mean_probs(x_n_K_C, p)[:, None, :]  # float64 chunk temporary
    var_n_C = np.einsum("nkc,nkc->nc", dev_n_K_C, dev_n_K_C) / k  # population variance
    return np.sqrt(var_n_C).sum(axis=1) / c


def _vote_entropy_kernel(x_n_K_C: np.ndarray) -> np.ndarray:
    k = x_n_K_C.shape[1]
    if k == 1:
        return np.zeros(x_n_K_C.shape[0])
    return _entropy_of_probs(_vote_counts(x_n_K_C) / k)


def _consensus_kl_kernel(x_n_K_C: np.ndarray) -> np.ndarray:
    k = x_n_K_C.shape[1]
    if k == 1:
        return np.zeros(x_n_K_C.shape[0])
    # Inputs are finite here (-inf clipped to _LOG_FLOOR), so where p_kc = 0 the term is
    # 0 * (finite) = 0: the 0 log 0 guard. Where p_kc > 0, p̄_c > 0 and log p̄_c is finite.
    p = np.exp(x_n_K_C)
    log_mean_n_C = _log_mean_probs_kernel(x_n_K_C, p).astype(x_n_K_C.dtype)
    log_ratio_n_K_C = x_n_K_C - log_mean_n_C[:, None, :]  # log p_kc - log p̄_c
    kl_sum_n = np.einsum("nkc,nkc->n", p, log_ratio_n_K_C, dtype=np.float64)
    return np.maximum(kl_sum_n / k, 0.0)


# --------------------------------------------------------------------------------------
# Public scores
# --------------------------------------------------------------------------------------


def predictive_log_probs(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Log of the predictive distribution: ``log p̄_c = log mean_k p_kc``, float64 ``[N, C]``.

    Equal to ``logsumexp_k(log_probs) - log K``: computed as the log of the mean
    probability, and rows where that mean underflows the input precision are redone with
    the max shifted out, so tiny probabilities keep their relative precision. ``-inf``
    where every sample gives the class probability 0. K = 1 returns the input as float64.

    Args:
        log_probs_N_K_C: natural-log probabilities ``[N, K, C]``.
        chunk_rows: rows per chunk (default: about 2**17 values per chunk).
    """
    _check_log_probs(log_probs_N_K_C)
    _check_chunk_rows(chunk_rows)
    c = log_probs_N_K_C.shape[2]
    return _map_rows(_log_mean_probs_kernel, log_probs_N_K_C, chunk_rows, clip=False, tail=(c,))


def least_confidence(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Least confidence ``1 - max_c p̄_c`` in ``[0, 1 - 1/C]``; float64 ``[N]``.

    Lewis & Gale, "A sequential algorithm for training text classifiers", SIGIR 1994
    (uncertainty sampling); the form used by Settles, "Active Learning Literature Survey",
    2009. P = [0.5, 0.3, 0.2] gives 0.5.
    """
    return _score(_least_confidence_kernel, log_probs_N_K_C, chunk_rows)


def raw_margin(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Textbook margin ``p̄_(1) - p̄_(2)`` (top two classes) in ``[0, 1]``; float64 ``[N]``.

    SMALLER = more uncertain, so this is not an acquisition score; see :func:`margin`.
    Scheffer, Decomain & Wrobel, "Active hidden Markov models for information
    extraction", IDA 2001. P = [0.5, 0.3, 0.2] gives 0.2.
    """
    return _score(_raw_margin_kernel, log_probs_N_K_C, chunk_rows)


def margin(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Margin as an acquisition score: ``1 - (p̄_(1) - p̄_(2))`` in ``[0, 1]``; float64 ``[N]``.

    Higher = the top two classes are closer = more uncertain; non-negative, so power
    sampling can take its log. Scheffer et al., IDA 2001. P = [0.5, 0.3, 0.2] gives 0.8.
    """
    return _score(_margin_kernel, log_probs_N_K_C, chunk_rows)


def entropy(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Predictive entropy ``H[p̄] = -sum_c p̄_c log p̄_c`` in nats, in ``[0, log C]``; float64 ``[N]``.

    Shannon 1948; "Max Entropy" in Gal, Islam & Ghahramani, "Deep Bayesian Active Learning
    with Image Data", ICML 2017. P = [0.5, 0.3, 0.2] gives 1.0297.
    """
    return _score(_entropy_kernel, log_probs_N_K_C, chunk_rows)


def expected_entropy(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Expected (conditional) entropy ``E_k H[p_k] = mean_k H[p_k]`` in nats; float64 ``[N]``.

    The aleatoric term of BALD, ``E[H[y | x, ω]]`` in Houlsby et al. 2011 / Gal et al. 2017.
    """
    return _score(_expected_entropy_kernel, log_probs_N_K_C, chunk_rows)


def bald(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """BALD, the mutual information ``H[p̄] - mean_k H[p_k]`` in nats; float64 ``[N]``.

    Houlsby, Huszár, Ghahramani & Lengyel, "Bayesian Active Learning for Classification and
    Preference Learning", 2011; Gal, Islam & Ghahramani, ICML 2017. In ``[0, min(H[p̄],
    log K)]``; rounding negatives are clamped to 0; K = 1 gives 0.
    """
    return _score(_bald_kernel, log_probs_N_K_C, chunk_rows)


def variation_ratios(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Variation ratios ``1 - f_mode / K`` in ``[0, 1 - 1/K]``; float64 ``[N]``.

    ``f_mode`` = how many of the K samples vote for the modal class (a sample votes for its
    argmax class; ties go to the lowest class index). Freeman, "Elementary Applied
    Statistics", 1965; Gal, Islam & Ghahramani, ICML 2017. K = 1 gives 0.
    """
    return _score(_variation_ratios_kernel, log_probs_N_K_C, chunk_rows)


def mean_std(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Mean over classes of the population std (ddof = 0) over K of ``p_kc``; float64 ``[N]``.

    Kampffmeyer, Salberg & Jenssen, "Semantic Segmentation of Small Objects and Modeling of
    Uncertainty in Urban Remote Sensing Images Using Deep CNNs", CVPR-W 2016. In
    ``[0, 0.5]``; K = 1 gives 0.
    """
    return _score(_mean_std_kernel, log_probs_N_K_C, chunk_rows)


def vote_entropy(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Vote entropy: entropy (nats) of the distribution of the K members' argmax labels.

    Query by committee: Dagan & Engelson, "Committee-Based Sampling for Training
    Probabilistic Classifiers", ICML 1995. In ``[0, log min(K, C)]``; ties in a member's
    argmax go to the lowest class index; K = 1 gives 0. float64 ``[N]``.
    """
    return _score(_vote_entropy_kernel, log_probs_N_K_C, chunk_rows)


def consensus_kl(log_probs_N_K_C: np.ndarray, *, chunk_rows: int | None = None) -> np.ndarray:
    """Mean KL divergence to the consensus, ``mean_k KL(p_k || p̄)`` in nats; float64 ``[N]``.

    Query by committee: McCallum & Nigam, "Employing EM and Pool-Based Active Learning for
    Text Classification", ICML 1998. Computed in log space (``log p̄`` by logsumexp,
    ``0 log 0 = 0``). Equal to :func:`bald` in exact arithmetic (mean KL to the mean is
    the mutual information between label and member); computed directly, it keeps its
    relative precision when the disagreement is tiny. K = 1 gives 0.
    """
    return _score(_consensus_kl_kernel, log_probs_N_K_C, chunk_rows)


# --------------------------------------------------------------------------------------
# Stochastic batch acquisition: Gumbel-top-k keys (Kirsch et al., TMLR 2023)
# --------------------------------------------------------------------------------------


def _check_vector(name: str, values_N: object) -> np.ndarray:
    if not isinstance(values_N, np.ndarray):
        raise AlscaleError(f"{name} must be a 1-D numpy array; got {type(values_N).__name__}")
    if values_N.ndim != 1:
        raise AlscaleError(f"{name} must be 1-D [N]; got shape {values_N.shape}")
    if values_N.dtype == np.bool_ or not (
        np.issubdtype(values_N.dtype, np.floating) or np.issubdtype(values_N.dtype, np.integer)
    ):
        raise AlscaleError(f"{name} must hold real numbers; got dtype {values_N.dtype}")
    values_N = values_N.astype(np.float64, copy=False)
    bad = ~np.isfinite(values_N)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AlscaleError(f"{name} must be finite; {name}[{i}] = {values_N[i]}")
    return values_N


def _check_keys_args(
    name: str, values_N: object, gumbel_N: object, beta: object
) -> tuple[np.ndarray, np.ndarray, float]:
    values_N = _check_vector(name, values_N)
    gumbel_N = _check_vector("gumbel", gumbel_N)
    if gumbel_N.shape != values_N.shape:
        raise AlscaleError(f"gumbel must have the shape of {name}; got {gumbel_N.shape} and {values_N.shape}")
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float, np.integer, np.floating))
        or not math.isfinite(beta)
        or beta <= 0
    ):
        raise AlscaleError(f"beta must be a positive number; got {short_repr(beta)}")
    return values_N, gumbel_N, float(beta)


def power_keys(scores_N: np.ndarray, gumbel_N: np.ndarray, beta: float) -> np.ndarray:
    """PowerAcquisition keys ``beta * log(max(s, tiny)) + g``: sampling ``p_i ∝ s_i^beta``.

    Kirsch et al., TMLR 2023 (PowerBALD, PowerEntropy ...). ``scores_N`` must be
    non-negative (a score of 0 gets log(tiny) ≈ -708 and is picked after every positive
    one); ``gumbel_N`` is standard Gumbel noise (:func:`alscale.strategies.noise.keyed_gumbel`).
    Returns float64 ``[N]``; the top-B rows by key are the sample.
    """
    scores_N, gumbel_N, beta = _check_keys_args("scores", scores_N, gumbel_N, beta)
    negative = scores_N < 0
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        raise AlscaleError(
            f"power sampling needs non-negative scores; scores[{i}] = {scores_N[i]:g} "
            "(use softmax or softrank for signed scores)"
        )
    return beta * np.log(np.maximum(scores_N, _TINY)) + gumbel_N


def softmax_keys(scores_N: np.ndarray, gumbel_N: np.ndarray, beta: float) -> np.ndarray:
    """SoftmaxAcquisition keys ``beta * s + g``: sampling ``p_i ∝ exp(beta * s_i)``.

    Kirsch et al., TMLR 2023. Returns float64 ``[N]``.
    """
    scores_N, gumbel_N, beta = _check_keys_args("scores", scores_N, gumbel_N, beta)
    return beta * scores_N + gumbel_N


def softrank_keys(ranks_N: np.ndarray, gumbel_N: np.ndarray, beta: float) -> np.ndarray:
    """SoftrankAcquisition keys ``-beta * log(rank) + g``: sampling ``p_i ∝ rank_i^-beta``.

    Kirsch et al., TMLR 2023. ``ranks_N >= 1``, rank 1 = highest base score among the
    unlabelled rows of the whole pool (the caller ranks globally; ties by lower row_id).
    Returns float64 ``[N]``.
    """
    ranks_N, gumbel_N, beta = _check_keys_args("ranks", ranks_N, gumbel_N, beta)
    small = ranks_N < 1
    if small.any():
        i = int(np.flatnonzero(small)[0])
        raise AlscaleError(f"ranks must be >= 1 (rank 1 = highest score); ranks[{i}] = {ranks_N[i]:g}")
    return -beta * np.log(ranks_N) + gumbel_N


# -- the score strategies (registry specs) ---------------------------------------------
from alscale.strategies import spec as _spec  # noqa: E402  (specs below the kernels they name)

_SCORE_SUPPORTS = _spec.Supports(quotas=True, keeps=("base_score",), stochastic_base=True)


def _score_spec(name: str, fn: Callable[[np.ndarray], np.ndarray], min_samples: int, summary: str,
                aliases: tuple[str, ...] = ()) -> _spec.StrategySpec:
    return _spec.StrategySpec(name, "score", summary, needs=_spec.Needs(log_probs=True, min_samples=min_samples),
                              supports=_SCORE_SUPPORTS, aliases=aliases, score=fn)


SPECS = (
    _score_spec("least_confidence", least_confidence, 1, "1 - max_c p(c|x) (Lewis & Gale, SIGIR 1994)",
                ("lc", "least_confident")),
    _score_spec("margin", margin, 1, "1 - (p_top1 - p_top2) (Scheffer et al., IDA 2001)"),
    _score_spec("entropy", entropy, 1, "predictive entropy H[p(y|x)] (Shannon 1948; Gal et al., ICML 2017)",
                ("max_entropy",)),
    _score_spec("bald", bald, 2, "mutual information of label and weights (Houlsby et al. 2011; Gal et al. 2017)"),
    _score_spec("variation_ratios", variation_ratios, 2,
                "1 - modal-class vote share over K samples (Freeman 1965; Gal et al., ICML 2017)",
                ("varratios", "var_ratios")),
    _score_spec("mean_std", mean_std, 2,
                "mean over classes of the std of p(c|x,w) over K samples (Kampffmeyer et al., CVPR-W 2016)"),
    _score_spec("vote_entropy", vote_entropy, 2,
                "entropy of the committee's argmax votes (QBC; Dagan & Engelson, ICML 1995)", ("qbc", "vote")),
    _score_spec("consensus_kl", consensus_kl, 2,
                "mean KL of each member to the consensus (QBC; McCallum & Nigam, ICML 1998)", ("kl",)),
)
