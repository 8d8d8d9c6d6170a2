"""Joint entropy of a batch's labels under K posterior samples: the BatchBALD kernels.

Kirsch, van Amersfoort & Gal, "BatchBALD: Efficient and Diverse Batch Acquisition for Deep
Bayesian Active Learning", NeurIPS 2019 (§3 and App. C for the sampled estimator).

Notation. ``ω_1..ω_K`` are posterior samples (consistent MC-dropout masks or committee
members) with ``p(ω_k) = 1/K``; row ``x`` has ``q_k(c) = p(y = c | x, ω_k)``. A batch
``A = (x_1..x_n)`` has labels ``y_1..y_n``; a *configuration* ``ŷ = (ŷ_1..ŷ_n)`` is one joint
label assignment, with ``p(ŷ | ω_k) = Π_i p(ŷ_i | x_i, ω_k)`` and
``p(ŷ) = (1/K) Σ_k p(ŷ | ω_k)``.

**Joint state.** A batch is summarised by a weighted set of M configurations
(:class:`BatchJoint`):

- ``log_joint_M_K[m, k] = log p(ŷ_m | ω_k)`` (kept in log space: ``p(ŷ_m)`` of a 100-point
  batch is far below the smallest double);
- ``post_M_K[m, k] = p(ω_k | ŷ_m) = softmax_k(log_joint_M_K[m])`` (Bayes, uniform prior);
- ``weights_M``: ``p(ŷ_m)`` when the C^n configurations are enumerated (*exact*), or
  ``count_m / M`` for M configurations sampled from ``p(ŷ)`` (*sampled*; identical samples
  are merged, which changes nothing but the cost).

**Adding a candidate y.** With ``π_m(c) = p(y = c | ŷ_m) = Σ_k post_mk q_k(c)``,

    H(y_1..n, y) = Σ_m w_m [ -log p(ŷ_m) + H(π_m) ] = Ĥ(A) + Ĥ(y | A).

For the enumeration this is the exact joint entropy. For samples it is the importance-
sampled estimator of the paper and of batchbald_redux,
``H ≈ -(1/M) Σ_m Σ_c [p(ŷ_m, c) / p(ŷ_m)] log p(ŷ_m, c)``, rewritten with
``p(ŷ_m, c) = p(ŷ_m) π_m(c)``: the candidate-dependent part is ``Σ_m w_m H(π_m)``, one GEMM
``[n·C, K] x [K, M]`` per chunk of n candidates and one ``π log π`` per element. Nothing is
ever ``[U, M, C]`` for the pool, and nothing underflows however long the batch is.

**Sampling.** Configuration m belongs to posterior sample ``k(m) = m mod K`` (stratified, as
the reference's M // K draws per sample; the ``M mod K`` left-over configurations draw
their sample uniformly), and its label of the j-th batch row is drawn from
``p(· | x_j, ω_k(m))`` by inverse CDF at a keyed uniform of ``(seed, round, j, m)``
(:mod:`alscale.strategies.noise`). The sampled configurations are thus a pure function of
the job's seed and the batch: the same in every process and for every sharding, and the
same whether built pick by pick or all at once (which is what the switch from exact to
sampled does).

**Jensen bound.** ``-x log x`` is concave, so for weights summing to one
``Σ_m w_m H(π_m) <= H(Σ_m w_m π_m) = H(Σ_k w̄_k q_k)`` with ``w̄_K = Σ_m w_m post_mk``: a bound
on a candidate's conditional entropy that costs ``O(K·C)`` instead of ``O(M·K·C)``. For the
exact state ``w̄ = 1/K`` (the posterior averaged over the predictive is the prior), so the
bound is BALD itself. Applied per group of configurations (:func:`group_configs`) it is
tighter: ``Σ_g W_g H(π̄_g)`` costs ``G/M`` of the exact evaluation. Both bounds are the
conditional entropy of a smaller state, so they use the same kernels.

**Two evaluations of a candidate.** :func:`row_conditional_entropy` is the *reference*: one
row in float64 numpy, in an operation order fixed by the shapes alone (elementwise IEEE
products and sums, no BLAS), so its bits depend on nothing but the row and the state — not
on chunking, sharding, threads or device. :func:`chunk_conditional_entropies` is the *fast*
path: float32 torch GEMMs on CPU or CUDA over a chunk; its error is bounded by
:func:`fast_error_bound`. The selection loop ranks with the fast path and decides with the
reference on the few rows the bound cannot separate (see ``batchbald.py``).

Public functions validate and raise :class:`~alscale.errors.AlscaleError`; the kernels
(``row_*``, ``chunk_*``) assume valid, finite-or-``-inf`` natural-log probabilities.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import noise
from alscale.validation import check_log_probs

if TYPE_CHECKING:  # torch is imported lazily: alscale.strategies imports without it
    import torch

__all__ = [
    "BatchJoint",
    "chunk_conditional_entropies",
    "chunk_expected_entropies",
    "exact_float32_matmul",
    "farthest_point_centres",
    "fast_error_bound",
    "float64_error_bound",
    "float64_gains",
    "group_configs",
    "grouped_state",
    "joint_entropies_with",
    "joint_entropy",
    "ops_single_threaded",
    "row_conditional_entropy",
    "row_expected_entropy",
]

#: float32 and float64 unit roundoffs.
U32 = 2.0**-24
U64 = 2.0**-53
# Floors that make 0 * log 0 vanish: p is clamped to these before the log (their
# contribution, below 1e-28 per term, is far under every error bound used here).
_TINY64 = np.finfo(np.float64).tiny
_TINY32 = 1e-30
_LN2 = math.log(2.0)
#: Exact enumeration is refused beyond this many configurations (M·K float64 each).
MAX_CONFIGS_LIMIT = 1 << 20
MAX_SAMPLES_LIMIT = 1 << 20
# Work budget (multiply-adds) of the sequential farthest-point initialisation of
# group_configs: all G = M/4 centres for M = 1,000, K = 100; a quarter of them at M = 10,000.
_FP_INIT_MACS = 250_000_000
# ... and of the Lloyd refinement (at least one step).
_LLOYD_MACS = 1_000_000_000


# --------------------------------------------------------------------------------------
# Keyed randomness for the sampled configurations
# --------------------------------------------------------------------------------------


def _derived_seed(seed: int, tag: str, index: int = 0) -> int:
    """A 63-bit seed for stream ``tag``/``index`` of the job seed (platform independent)."""
    digest = hashlib.blake2b(f"alscale.batchbald:{int(seed)}:{tag}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_components(num_samples: int, k: int, seed: int, round: int) -> np.ndarray:
    """Posterior sample of each configuration: ``m mod K``, stratified; int64 ``[M]``.

    The last ``M mod K`` configurations draw theirs uniformly (keyed), so every configuration
    is marginally a draw from ``p(ŷ)`` and the estimator stays unbiased for any M.
    """
    comp_M = np.arange(num_samples, dtype=np.int64) % k
    full = (num_samples // k) * k
    if full < num_samples:
        u = noise.keyed_uniform(_derived_seed(seed, "component"), round, np.arange(full, num_samples))
        comp_M[full:] = np.minimum((u * k).astype(np.int64), k - 1)
    return comp_M


def draw_labels(log_probs_K_C: np.ndarray, comp_M: np.ndarray, u_M: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw of one row's label per configuration: ``y_m ~ p(· | ω_comp[m])``.

    ``log_probs_K_C`` float64; ``u_M`` in (0, 1). Classes of probability 0 are never drawn.
    Returns int64 ``[M]``.
    """
    p_K_C = np.exp(log_probs_K_C)
    cdf_K_C = np.cumsum(p_K_C, axis=1)
    c = p_K_C.shape[1]
    target_M = u_M * cdf_K_C[comp_M, -1]  # draw proportionally (rows need not sum to exactly 1)
    cdf_M_C = cdf_K_C[comp_M]
    labels_M = (cdf_M_C <= target_M[:, None]).sum(axis=1)  # first class whose cdf exceeds target
    last_pos_K = c - 1 - np.argmax(p_K_C[:, ::-1] > 0, axis=1)  # last class with p > 0
    return np.minimum(labels_M, last_pos_K[comp_M]).astype(np.int64)


# --------------------------------------------------------------------------------------
# The batch's joint state (coordinator side; float64 numpy)
# --------------------------------------------------------------------------------------


def _logsumexp_rows(x_M_K: np.ndarray) -> np.ndarray:
    top_M = x_M_K.max(axis=1)
    safe_M = np.where(np.isfinite(top_M), top_M, 0.0)
    with np.errstate(divide="ignore"):
        return safe_M + np.log(np.exp(x_M_K - safe_M[:, None]).sum(axis=1))


class BatchJoint:
    """Joint state of a greedy batch: exact while C^n <= ``max_configs``, then sampled.

    Build with :meth:`empty` and grow with :meth:`extend` (one picked row at a time). Every
    array is float64 and a pure function of (the picked rows, max_configs, num_samples,
    seed, round).

    Attributes:
        n: rows in the batch.
        mode: ``"exact"`` or ``"sampled"``.
        log_joint_M_K: ``log p(ŷ_m | ω_k)`` of the (distinct) configurations.
        weights_M: ``p(ŷ_m)`` (exact) or ``count_m / M`` (sampled); sums to 1.
        post_M_K: ``p(ω_k | ŷ_m)``, rows sum to 1.
        log_marginal_M: ``log p(ŷ_m)``.
        wbar_K: ``Σ_m w_m post_mk`` (the Jensen-bound weights).
        entropy: ``Ĥ(y_1..n) = Σ_m w_m (-log p(ŷ_m))`` (exact or the sampled estimate).
    """

    def __init__(self, k: int, c: int, *, max_configs: int, num_samples: int, seed: int, round: int) -> None:
        self.k, self.c = int(k), int(c)
        self.max_configs, self.num_samples = int(max_configs), int(num_samples)
        self.seed, self.round = int(seed), int(round)
        self.n = 0
        self.mode = "exact"
        self._rows: list[np.ndarray] = []  # picked rows' log-probs, float64 [K, C]
        self._labels: list[np.ndarray] = []  # sampled labels per picked row, int64 [M]
        self._comp_M: np.ndarray | None = None
        self._set(np.zeros((1, self.k)), None)

    @classmethod
    def empty(
        cls, k: int, c: int, *, max_configs: int | None = None, num_samples: int = 1000, seed: int = 0, round: int = 0
    ) -> BatchJoint:
        """The state of the empty batch (one configuration, probability 1)."""
        return cls(
            k, c, max_configs=num_samples if max_configs is None else max_configs, num_samples=num_samples,
            seed=seed, round=round,
        )

    def _set(self, log_joint_M_K: np.ndarray, counts_M: np.ndarray | None) -> None:
        lse_M = _logsumexp_rows(log_joint_M_K)
        self.log_marginal_M = lse_M - math.log(self.k)
        with np.errstate(invalid="ignore"):
            self.post_M_K = np.exp(log_joint_M_K - lse_M[:, None])
        if counts_M is None:
            self.weights_M = np.exp(self.log_marginal_M)
        else:
            self.weights_M = counts_M / counts_M.sum()
        self.log_joint_M_K = log_joint_M_K
        self.wbar_K = self.weights_M @ self.post_M_K
        self.entropy = float(-(self.weights_M * self.log_marginal_M).sum())

    @property
    def n_configs(self) -> int:
        return int(self.log_joint_M_K.shape[0])

    def extend(self, log_probs_K_C: np.ndarray) -> BatchJoint:
        """Add one picked row (its ``[K, C]`` log-probs); returns self."""
        row_K_C = np.asarray(log_probs_K_C, dtype=np.float64)
        j = self.n
        self.n += 1
        self._rows.append(row_K_C)
        if self.mode == "exact" and self.c**self.n <= self.max_configs:
            m = self.log_joint_M_K.shape[0]
            # new[m, c, k] = old[m, k] + log p(c | x_j, ω_k): configurations extended by y_j = c
            lj_M_C_K = self.log_joint_M_K[:, None, :] + row_K_C.T[None, :, :]
            lj = lj_M_C_K.reshape(m * self.c, self.k)
            keep = np.isfinite(lj.max(axis=1))  # p(ŷ) = 0 contributes nothing
            self._set(lj if keep.all() else lj[keep], None)
            return self
        if self.mode == "exact":  # switch: draw the labels of every row so far
            self.mode = "sampled"
            self._comp_M = sample_components(self.num_samples, self.k, self.seed, self.round)
            for i, row in enumerate(self._rows):
                self._labels.append(self._draw(i, row))
        else:
            self._labels.append(self._draw(j, row_K_C))
        labels_M_n = np.stack(self._labels, axis=1)
        uniq_U_n, first_U, counts_U = np.unique(labels_M_n, axis=0, return_index=True, return_counts=True)
        lj_U_K = np.zeros((uniq_U_n.shape[0], self.k))
        for i, row in enumerate(self._rows):  # fixed order over the batch rows
            lj_U_K += row[:, uniq_U_n[:, i]].T
        self._set(lj_U_K, counts_U.astype(np.float64))
        return self

    def _draw(self, j: int, row_K_C: np.ndarray) -> np.ndarray:
        assert self._comp_M is not None
        u_M = noise.keyed_uniform(_derived_seed(self.seed, "label", j), self.round, np.arange(self.num_samples))
        return draw_labels(row_K_C, self._comp_M, u_M)


# --------------------------------------------------------------------------------------
# Reference per-row kernels (float64 numpy, bits independent of everything but the row)
# --------------------------------------------------------------------------------------


def row_conditional_entropy(post_T_K_M: np.ndarray, weights_M: np.ndarray, log_probs_K_C: np.ndarray) -> float:
    """``Ĥ(y | A) = Σ_m w_m H(π_m)``, ``π_m = Σ_k post_mk q_k``, for one row; float64.

    ``post_T_K_M`` is the state's ``post_M_K`` transposed, C-contiguous float64. Only
    elementwise IEEE operations in an order fixed by (K, M, C) — no BLAS, no threads — so
    the result is bit-for-bit the same in any process and for any grouping of rows.
    """
    q_K_C = np.exp(np.asarray(log_probs_K_C, dtype=np.float64))
    k = q_K_C.shape[0]
    acc_M_C = np.multiply.outer(post_T_K_M[0], q_K_C[0])
    tmp_M_C = np.empty_like(acc_M_C)
    for i in range(1, k):
        np.multiply.outer(post_T_K_M[i], q_K_C[i], out=tmp_M_C)
        acc_M_C += tmp_M_C
    np.maximum(acc_M_C, _TINY64, out=acc_M_C)
    h_M = -(acc_M_C * np.log(acc_M_C)).sum(axis=1)
    return float((weights_M * h_M).sum())


def row_expected_entropy(log_probs_K_C: np.ndarray) -> float:
    """``E_ω H(y | x, ω) = -(1/K) Σ_k Σ_c q_k(c) log q_k(c)`` for one row; float64, same rules."""
    lp_K_C = np.asarray(log_probs_K_C, dtype=np.float64)
    q_K_C = np.exp(lp_K_C)
    t_K_C = np.where(q_K_C > 0, q_K_C * np.maximum(lp_K_C, -1e300), 0.0)
    return float(-t_K_C.sum(axis=1).sum() / lp_K_C.shape[0])


# --------------------------------------------------------------------------------------
# Fast chunk kernels (float32 torch, CPU or CUDA)
# --------------------------------------------------------------------------------------


def fast_error_bound(k: int, c: int) -> float:
    """Bound on ``|chunk_conditional_entropies - row_conditional_entropy|`` (and on the
    float32 Jensen bound and expected entropy), in nats, for K samples and C classes.

    First-order float32 analysis with u = 2^-24: ``q = exp(log p)`` (2u) and the state's
    weights rounded to float32 (u) perturb each non-negative K-term sum ``π`` by at most
    ``(K + 4) u π`` (relative); that moves ``π log π`` by ``|Δπ| (|log π| + 1)``, i.e. at most
    ``(K + 4) u (H + s)`` per configuration, ``s = Σ_c π <= 1.3`` (inputs normalised to the
    tolerance of :mod:`~alscale.strategies.scores`); the float32 log and product add
    ``2u H``, the C-term float32 sum ``C u H``; the sum over configurations is float64.
    ``H <= 1.3 (log C + 1)``. (The kernel takes ``log2`` and scales by ``ln 2`` in float64:
    the same relative error.) Doubled for second-order terms and the expected-entropy term.
    """
    h_max = 1.3 * (math.log(c) + 1.0)
    per_config = (k + 4) * U32 * (h_max + 1.3) + (c + 4) * U32 * h_max
    return 2.0 * per_config + 1e-12


def float64_error_bound(k: int, c: int, m: int) -> float:
    """Bound on ``|float64_gains - (row_conditional_entropy - row_expected_entropy)|`` in nats,
    for K samples, C classes and M configurations.

    The analysis of :func:`fast_error_bound` with u = 2^-53, counted for *both* evaluations
    (the reference's own float64 rounding is no longer negligible): per configuration
    ``(K + 4) u (H + s) + (C + 4) u H`` each; the weighted sum over the M configurations
    (the fast path's GEMV in an unknown order: ``γ_M``; the reference's pairwise sum:
    ``(log2 M + 1) u``) at most ``(M + log2 M + 2) u H``; the expected entropies
    ``(K + C + 4) u H`` each; the fast path's clamp of π at 1e-30 (the reference's is the
    smallest double) at most ``C · 1e-28``. Doubled for second-order terms. About 1e-12 nats
    at K = 20, C = 10, M = 1,000: seven orders of magnitude under the float32 bound.
    """
    h_max = 1.3 * (math.log(c) + 1.0)
    per_config = (k + 4) * U64 * (h_max + 1.3) + (c + 4) * U64 * h_max
    sums = (m + math.log2(max(m, 2)) + 2) * U64 * h_max
    expected = (k + c + 4) * U64 * h_max
    return 2.0 * (2 * per_config + sums + 2 * expected) + c * 1e-28


def _torch() -> Any:
    import torch

    return torch


@contextmanager
def exact_float32_matmul() -> Iterator[None]:
    """Full float32 GEMMs inside the block (no TF32 / bfloat16 shortcuts, which a caller may
    have enabled with ``torch.set_float32_matmul_precision``): :func:`fast_error_bound`
    assumes IEEE float32 products."""
    torch = _torch()
    prev = torch.get_float32_matmul_precision()
    if prev != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if prev != "highest":
            torch.set_float32_matmul_precision(prev)


@contextmanager
def ops_single_threaded(on: bool = True) -> Iterator[None]:
    """Run torch ops single-threaded inside the block (restores the thread count after).

    Used where chunks run in parallel threads instead (no barrier per op, which keeps both
    cores busy even on a machine shared with other jobs: intra-op OpenMP threads stall
    there) and for small matrices.
    """
    if not on:
        yield
        return
    torch = _torch()
    prev = torch.get_num_threads()
    if prev > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if prev > 1:
            torch.set_num_threads(prev)


def chunk_conditional_entropies(
    post_K_M: torch.Tensor, weights_M: torch.Tensor, probs_n_C_K: torch.Tensor, work: torch.Tensor | None = None
) -> torch.Tensor:
    """``Ĥ(y | A)`` for a chunk of candidates: float64 ``[n]`` (fast path).

    Args:
        post_K_M: float32 ``[K, M]`` posterior of the state's configurations (transposed).
        weights_M: float64 ``[M]`` configuration weights.
        probs_n_C_K: float32 ``[n, C, K]`` candidate probabilities (classes before samples).

    One GEMM ``[n·C, K] x [K, M]`` gives ``π`` for every (candidate, class, configuration);
    then ``π log2 π`` (float32), the sum over classes (float32) and the weighted sum over
    configurations (float64 GEMV), times ``-ln 2``. Peak memory ``2 n C M`` floats: in
    ``work`` when given (at least that many elements of the inputs' dtype, reused across
    chunks so that a long loop does not grow the allocator's heap). Error within
    :func:`fast_error_bound`.
    """
    torch = _torch()
    n, c, k = probs_n_C_K.shape
    m = post_K_M.shape[1]
    if work is None:
        pi_nC_M = probs_n_C_K.reshape(n * c, k) @ post_K_M
    else:
        pi_nC_M = torch.matmul(probs_n_C_K.reshape(n * c, k), post_K_M, out=work[: n * c * m].view(n * c, m))
    pi_nC_M.clamp_(min=_TINY32)
    if work is None:
        ent_nC_M = torch.log2(pi_nC_M)  # log2: ~20 % faster than log here; scaled by ln 2 below
    else:
        ent_nC_M = torch.log2(pi_nC_M, out=work[n * c * m : 2 * n * c * m].view(n * c, m))
    ent_nC_M.mul_(pi_nC_M)  # π log2 π (<= 0)
    del pi_nC_M
    s_n_M = ent_nC_M.view(n, c, m).sum(dim=1)
    return (s_n_M.double() @ weights_M) * -_LN2


def chunk_expected_entropies(log_probs_n_K_C: torch.Tensor, probs_n_K_C: torch.Tensor) -> torch.Tensor:
    """``E_ω H(y | x, ω)`` per row of a float32 chunk (log-probs and their exp, ``[n, K, C]``):
    float64 ``[n]`` (fast path: float32 products and class sums, float64 over samples)."""
    k = log_probs_n_K_C.shape[1]
    t_n_K = (probs_n_K_C * log_probs_n_K_C.clamp(min=-1e30)).sum(dim=2)  # 0 * (-1e30) = 0
    return -t_n_K.double().sum(dim=1) / k


def float64_gains(post_K_M: torch.Tensor, weights_M: torch.Tensor, log_probs_n_K_C: torch.Tensor,
                  work: torch.Tensor | None = None) -> torch.Tensor:
    """``Ĥ(y | A) - E_ω H(y | ω)`` for a chunk of candidates, all in float64: ``[n]``.

    Args:
        post_K_M: float64 ``[K, M]`` posterior of the state's configurations (transposed).
        weights_M: float64 ``[M]`` configuration weights.
        log_probs_n_K_C: float64 ``[n, K, C]`` candidate log-probabilities.
        work: optional float64 workspace of ``2 n C M`` elements (see
            :func:`chunk_conditional_entropies`).

    The fast path's GEMM formulation (:func:`chunk_conditional_entropies`) at double
    precision: about 1.3x its float32 cost on CPU, and within :func:`float64_error_bound`
    (~1e-12 nats) of the reference instead of :func:`fast_error_bound` (~2e-5). It separates
    the rows whose gains the float32 path cannot tell apart — every row, once a long batch's
    joint mutual information approaches its ceiling ``log K`` and all gains shrink towards 0
    — so that only true near-ties go to the reference kernel.
    """
    probs_n_K_C = log_probs_n_K_C.exp()
    h_n = chunk_conditional_entropies(post_K_M, weights_M, probs_n_K_C.transpose(1, 2).contiguous(), work)
    return h_n - chunk_expected_entropies(log_probs_n_K_C, probs_n_K_C)


# --------------------------------------------------------------------------------------
# Grouped Jensen bounds (coordinator side)
# --------------------------------------------------------------------------------------


def farthest_point_centres(m: int, k: int, n_groups: int) -> int:
    """How many of :func:`group_configs`' centres the sequential farthest-point pass picks."""
    return min(n_groups, max(64, _FP_INIT_MACS // (m * k)))


def group_configs(post_M_K: np.ndarray, weights_M: np.ndarray, n_groups: int, iters: int = 2) -> np.ndarray:
    """Group configurations with similar posteriors (KL k-means); returns int64 ``[M]`` labels.

    For any grouping, ``Σ_m w_m H(π_m) <= Σ_g W_g H(Σ_{m∈g} (w_m / W_g) π_m)`` (Jensen per
    group), and the gap is at most ``Σ_g Σ_{m∈g} w_m KL(post_m || post̄_g)`` for every
    candidate (data processing: ``π = post · Q`` is a channel). So the grouping minimises that
    weighted KL (Bregman k-means, Banerjee et al., JMLR 2005): assign to the centre of least
    cross-entropy, centre = weighted mean. Initialised by weighted farthest-point in KL from
    the heaviest configuration — sequential, so for at most ``_FP_INIT_MACS / (M K)`` centres;
    the rest are the configurations then farthest from their centre, taken at once — and
    refined by ``iters`` Lloyd steps (fewer if they would exceed ``_LLOYD_MACS``). float64 torch
    on CPU, single-threaded ops (small matrices; BLAS threads only stall on a shared machine).
    The grouping changes how tight the bound is, never a result.
    """
    m = post_M_K.shape[0]
    if n_groups >= m:
        return np.arange(m, dtype=np.int64)
    torch = _torch()
    with ops_single_threaded(True):
        post = torch.from_numpy(np.ascontiguousarray(post_M_K, dtype=np.float64))
        w = torch.from_numpy(np.ascontiguousarray(weights_M, dtype=np.float64))
        log_post = post.clamp(min=_TINY64).log()
        neg_entropy_M = (post * log_post).sum(dim=1)
        centres = [int(torch.argmax(w))]
        best_kl_M = neg_entropy_M - post @ log_post[centres[0]]
        n_fp = farthest_point_centres(m, post_M_K.shape[1], n_groups)
        for _ in range(1, n_fp):
            nxt = int(torch.argmax(w * best_kl_M))
            centres.append(nxt)
            torch.minimum(best_kl_M, neg_entropy_M - post @ log_post[nxt], out=best_kl_M)
        if n_groups > n_fp:
            far_M = (w * best_kl_M).numpy().copy()
            far_M[centres] = -np.inf
            centres += np.argsort(-far_M, kind="stable")[: n_groups - n_fp].tolist()
        c_G_K = post[centres].clone()
        labels_M = torch.zeros(m, dtype=torch.int64)
        wpost_M_K = w[:, None] * post
        for _ in range(max(1, min(iters, _LLOYD_MACS // (m * post_M_K.shape[1] * n_groups)))):
            labels_M = torch.argmax(post @ c_G_K.clamp(min=_TINY64).log().T, dim=1)
            mass_G = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, labels_M, w)
            sums_G_K = torch.zeros_like(c_G_K).index_add_(0, labels_M, wpost_M_K)
            used = mass_G > 0
            c_G_K[used] = sums_G_K[used] / mass_G[used, None]
        return labels_M.numpy()


def grouped_state(post_M_K: np.ndarray, weights_M: np.ndarray, labels_M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: (mean posterior ``[G, K]``, mass ``[G]``) — a state whose conditional entropy
    bounds the full one from above. Empty groups are dropped."""
    g = int(labels_M.max()) + 1 if labels_M.size else 0
    mass_G = np.bincount(labels_M, weights=weights_M, minlength=g)
    sums_G_K = np.zeros((g, post_M_K.shape[1]))
    np.add.at(sums_G_K, labels_M, weights_M[:, None] * post_M_K)
    used = mass_G > 0
    return sums_G_K[used] / mass_G[used, None], mass_G[used]


# --------------------------------------------------------------------------------------
# Public: joint entropies of given rows (validated)
# --------------------------------------------------------------------------------------


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise AlscaleError(f"{name} must be an integer in [{lo}, {hi}]; got {short_repr(value)}")
    return int(value)


def _build(
    log_probs: Any, max_configs: int | None, num_samples: int, seed: int, round: int, name: str
) -> tuple[BatchJoint, np.ndarray]:
    lp_N_K_C = check_log_probs(log_probs, name)
    num_samples = _check_int("num_samples", num_samples, 1, MAX_SAMPLES_LIMIT)
    max_configs = num_samples if max_configs is None else _check_int("max_configs", max_configs, 1, MAX_CONFIGS_LIMIT)
    _check_int("seed", seed, -(2**63), 2**64 - 1)
    _check_int("round", round, 0, 2**63 - 1)
    n, k, c = lp_N_K_C.shape
    state = BatchJoint.empty(k, c, max_configs=max_configs, num_samples=num_samples, seed=seed, round=round)
    for i in range(n):
        state.extend(lp_N_K_C[i])
    return state, lp_N_K_C


def joint_entropy(
    log_probs: np.ndarray,
    *,
    max_configs: int | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    round: int = 0,
) -> float:
    """Joint entropy ``H(y_1..N)`` (nats) of N rows' labels under K posterior samples.

    Args:
        log_probs: natural-log probabilities ``[N, K, C]``.
        max_configs: exact while ``C^N <= max_configs`` (default: ``num_samples``).
        num_samples: M configurations to sample beyond that (importance-sampled estimate).
        seed, round: the keys of the sampled configurations.
    """
    state, _ = _build(log_probs, max_configs, num_samples, seed, round, "log_probs")
    return state.entropy


def joint_entropies_with(
    batch_log_probs: np.ndarray,
    log_probs: np.ndarray,
    *,
    max_configs: int | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    round: int = 0,
) -> np.ndarray:
    """``H(y_batch, y_i)`` for every row i of ``log_probs`` ``[N, K, C]``: float64 ``[N]``.

    ``batch_log_probs`` ``[n, K, C]`` (n may be 0) defines the state (exact while
    ``C^n <= max_configs``); each row is evaluated with :func:`row_conditional_entropy`.
    """
    state, batch = _build(batch_log_probs, max_configs, num_samples, seed, round, "batch_log_probs")
    lp_N_K_C = check_log_probs(log_probs)
    if lp_N_K_C.shape[1:] != batch.shape[1:]:
        raise AlscaleError(
            f"log_probs rows are [K, C] = {list(lp_N_K_C.shape[1:])} but the batch's are {list(batch.shape[1:])}"
        )
    post_T = np.ascontiguousarray(state.post_M_K.T)
    return np.array(
        [state.entropy + row_conditional_entropy(post_T, state.weights_M, lp_N_K_C[i]) for i in range(len(lp_N_K_C))],
        dtype=np.float64,
    )
