"""Acquisition-score kernels: known answers, hand-computed cases, invariances, bounds, validation.

Known answers: REFERENCES.md §1 (worked example P = [0.5, 0.3, 0.2]; the BALD fixture from
the batchbald_redux notebooks, re-derived independently).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alscale.errors import AlscaleError
from alscale.strategies import noise, scores

SCORE_FNS = [
    scores.least_confidence,
    scores.margin,
    scores.raw_margin,
    scores.entropy,
    scores.expected_entropy,
    scores.bald,
    scores.variation_ratios,
    scores.mean_std,
    scores.vote_entropy,
    scores.consensus_kl,
]
ALL_FNS = [*SCORE_FNS, scores.predictive_log_probs]


def _log(probs) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(probs, dtype=np.float64))


def _random_log_probs(n: int, k: int, c: int, seed: int, dtype=np.float64, zeros: bool = False) -> np.ndarray:
    """Random normalised log-probs; with ``zeros`` some probabilities are exactly 0 (-inf)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 1, c)) * 3 + rng.normal(size=(n, k, c))
    if zeros:
        logits[rng.random(size=logits.shape) < 0.2] = -np.inf
        logits[..., 0] = np.maximum(logits[..., 0], 0.0)  # keep one class alive per sample
        logits[::7, :, 1] = -np.inf  # some classes are impossible under every sample
    top = logits.max(axis=2, keepdims=True)
    return (logits - top - np.log(np.exp(logits - top).sum(axis=2, keepdims=True))).astype(dtype)


# -- naive float64 references (row by row, straight from the definitions) ---------------


def _ref_entropy(p_C: np.ndarray) -> float:
    return -sum(float(v) * math.log(v) for v in p_C if v > 0)


def _ref_scores(log_probs_N_K_C: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {f.__name__: [] for f in SCORE_FNS}
    for x_K_C in log_probs_N_K_C.astype(np.float64):
        p_K_C = np.exp(x_K_C)
        k, c = p_K_C.shape
        mean_C = p_K_C.mean(axis=0)
        top = np.sort(mean_C)[::-1]
        votes = np.bincount(p_K_C.argmax(axis=1), minlength=c)
        h = _ref_entropy(mean_C)
        eh = float(np.mean([_ref_entropy(p) for p in p_K_C]))
        kl = float(
            np.mean([sum(p[j] * math.log(p[j] / mean_C[j]) for j in range(c) if p[j] > 0) for p in p_K_C])
        )
        out["least_confidence"].append(1 - top[0])
        out["raw_margin"].append(top[0] - top[1])
        out["margin"].append(1 - (top[0] - top[1]))
        out["entropy"].append(h)
        out["expected_entropy"].append(eh)
        out["bald"].append(h - eh)
        out["variation_ratios"].append(1 - votes.max() / k)
        out["mean_std"].append(float(p_K_C.std(axis=0).mean()))
        out["vote_entropy"].append(_ref_entropy(votes / k))
        out["consensus_kl"].append(kl)
    return {name: np.array(v) for name, v in out.items()}


# -- known answers ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 3])
def test_worked_example(dtype, k):
    # REFERENCES §1: P = [0.5, 0.3, 0.2]; K copies of it are the same prediction.
    lp = np.repeat(_log([[[0.5, 0.3, 0.2]]]), k, axis=1).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert scores.least_confidence(lp)[0] == pytest.approx(0.5, abs=tol)
    assert scores.raw_margin(lp)[0] == pytest.approx(0.2, abs=tol)
    assert scores.margin(lp)[0] == pytest.approx(0.8, abs=tol)
    assert round(float(scores.entropy(lp)[0]), 4) == 1.0297
    np.testing.assert_allclose(scores.predictive_log_probs(lp)[0], np.log([0.5, 0.3, 0.2]), atol=tol)


def _bald_fixture(dtype=np.float64) -> np.ndarray:
    """REFERENCES §1: K = 20, C = 4, N = 4; sample k of point i = (1 - m_k) p1_i + m_k p2_i."""
    pairs = [
        ([0.7, 0.1, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]),
        ([0.1, 0.7, 0.1, 0.1], [0.2, 0.3, 0.3, 0.2]),
        ([0.1, 0.1, 0.7, 0.1], [0.2, 0.2, 0.3, 0.3]),
        ([0.1, 0.1, 0.1, 0.7], [0.3, 0.2, 0.2, 0.3]),
    ]
    m_K = np.linspace(0, 1, 20)[:, None]
    probs = np.stack([(1 - m_K) * np.array(p1) + m_K * np.array(p2) for p1, p2 in pairs])
    return _log(probs).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bald_fixture(dtype):
    lp = _bald_fixture(dtype)
    assert lp.shape == (4, 20, 4)
    tol = 1e-4 if dtype == np.float32 else 0
    np.testing.assert_allclose(scores.expected_entropy(lp), 1.2069, atol=5e-5 + tol)  # E[H[y|ω]]
    np.testing.assert_allclose(scores.entropy(lp), 1.2376, atol=5e-5 + tol)  # H[y]
    np.testing.assert_allclose(scores.bald(lp), 0.030716, atol=5e-7 + tol / 10)
    # mean KL to the consensus is the same mutual information
    np.testing.assert_allclose(scores.consensus_kl(lp), 0.030716, atol=5e-7 + tol / 10)


# -- hand-computed small cases ------------------------------------------------------------


def test_variation_ratios_and_vote_entropy_by_hand():
    # K = 4 votes: 0, 0, 1, 2 -> modal share 2/4; vote distribution [.5, .25, .25]
    lp = _log([[[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]]])
    assert scores.variation_ratios(lp)[0] == pytest.approx(0.5)
    assert scores.vote_entropy(lp)[0] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    # unanimous committee
    lp = _log([[[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.9, 0.05, 0.05]]])
    assert scores.variation_ratios(lp)[0] == 0.0
    assert scores.vote_entropy(lp)[0] == 0.0


def test_argmax_ties_go_to_the_lowest_class():
    # sample 0 ties classes 0 and 1 -> votes 0; sample 1 votes 0: unanimous.
    lp = _log([[[0.4, 0.4, 0.2], [0.7, 0.2, 0.1]]])
    assert scores.variation_ratios(lp)[0] == 0.0
    assert scores.vote_entropy(lp)[0] == 0.0
    # sample 1 votes 1: split 1/1
    lp = _log([[[0.4, 0.4, 0.2], [0.1, 0.6, 0.3]]])
    assert scores.variation_ratios(lp)[0] == pytest.approx(0.5)
    assert scores.vote_entropy(lp)[0] == pytest.approx(math.log(2))


def test_mean_std_by_hand():
    two = _log(
        [
            [[0.8, 0.2], [0.6, 0.4]],  # std 0.1 in both classes
            [[1.0, 0.0], [0.0, 1.0]],  # stds [0.5, 0.5]: the maximum
        ]
    )
    np.testing.assert_allclose(scores.mean_std(two), [0.1, 0.5], atol=1e-12)
    three = _log([[[0.5, 0.3, 0.2], [0.3, 0.3, 0.4]]])  # stds [0.1, 0, 0.1]
    np.testing.assert_allclose(scores.mean_std(three), [0.2 / 3], atol=1e-12)


def test_consensus_kl_by_hand():
    lp = _log([[[0.8, 0.2], [0.4, 0.6]], [[1.0, 0.0], [0.0, 1.0]]])
    kl1 = 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.2 / 0.4)
    kl2 = 0.4 * math.log(0.4 / 0.6) + 0.6 * math.log(0.6 / 0.4)
    np.testing.assert_allclose(scores.consensus_kl(lp), [(kl1 + kl2) / 2, math.log(2)], atol=1e-12)
    np.testing.assert_allclose(scores.bald(lp), [(kl1 + kl2) / 2, math.log(2)], atol=1e-12)


def test_zero_probabilities_are_handled():
    # one-hot predictions: every score is finite, 0 log 0 = 0
    lp = _log([[[1.0, 0.0, 0.0]], [[0.0, 0.5, 0.5]]])
    np.testing.assert_allclose(scores.entropy(lp), [0.0, math.log(2)], atol=1e-15)
    np.testing.assert_allclose(scores.least_confidence(lp), [0.0, 0.5], atol=1e-15)
    np.testing.assert_allclose(scores.raw_margin(lp), [1.0, 0.0], atol=1e-15)
    plp = scores.predictive_log_probs(np.repeat(lp, 3, axis=1))
    assert np.isneginf(plp[0, 1:]).all() and plp[0, 0] == 0.0
    for fn in SCORE_FNS:
        assert np.isfinite(fn(np.repeat(lp, 2, axis=1))).all(), fn.__name__


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 2, 7])
def test_scores_match_naive_reference(dtype, k):
    lp = _random_log_probs(60, k, 5, seed=k, dtype=dtype, zeros=True)
    ref = _ref_scores(lp)
    atol = 2e-6 if dtype == np.float32 else 1e-11
    for fn in SCORE_FNS:
        np.testing.assert_allclose(fn(lp), ref[fn.__name__], atol=atol, rtol=0, err_msg=fn.__name__)
    mean_C = np.exp(lp.astype(np.float64)).mean(axis=1)
    with np.errstate(divide="ignore"):
        expect = np.log(mean_C)
    got = scores.predictive_log_probs(lp)
    assert (np.isneginf(got) == np.isneginf(expect)).all()
    finite = np.isfinite(expect)
    np.testing.assert_allclose(got[finite], expect[finite], atol=atol, rtol=0)


def test_predictive_log_probs_keeps_precision_for_tiny_probabilities():
    # p = e^-120 is subnormal-or-zero after exp in float32; the shifted path recovers it.
    lp = np.zeros((1, 2, 3), np.float32)
    lp[0, :, 1:] = -120.0
    lp[0, :, 0] = 0.0  # log(1 - 2e^-120) == 0 in float32
    np.testing.assert_allclose(scores.predictive_log_probs(lp)[0], [0.0, -120.0, -120.0], rtol=1e-6)


def test_returns_float64_and_empty_input():
    lp = _random_log_probs(5, 2, 3, seed=0, dtype=np.float32)
    for fn in ALL_FNS:
        assert fn(lp).dtype == np.float64
        empty = fn(np.zeros((0, 2, 3), np.float32))
        assert empty.shape[0] == 0 and empty.dtype == np.float64
    # float16 is accepted (computed as float32)
    np.testing.assert_allclose(scores.entropy(lp.astype(np.float16)), scores.entropy(lp), atol=5e-3)


# -- K = 1 reductions and consistency -----------------------------------------------------


def test_single_sample_reductions_are_exactly_zero():
    lp = _random_log_probs(50, 1, 6, seed=3)
    for fn in (scores.bald, scores.vote_entropy, scores.variation_ratios, scores.mean_std, scores.consensus_kl):
        assert (fn(lp) == 0).all(), fn.__name__
    np.testing.assert_allclose(scores.expected_entropy(lp), scores.entropy(lp), atol=1e-12)


def test_identical_samples_behave_like_one():
    lp1 = _random_log_probs(50, 1, 6, seed=4)
    lpk = np.repeat(lp1, 5, axis=1)
    for fn in (scores.least_confidence, scores.margin, scores.raw_margin, scores.entropy, scores.expected_entropy):
        np.testing.assert_allclose(fn(lpk), fn(lp1), atol=1e-12, err_msg=fn.__name__)
    for fn in (scores.bald, scores.vote_entropy, scores.variation_ratios, scores.mean_std, scores.consensus_kl):
        np.testing.assert_allclose(fn(lpk), 0.0, atol=1e-12, err_msg=fn.__name__)


# -- invariances ----------------------------------------------------------------------------


@pytest.mark.parametrize("fn", SCORE_FNS, ids=lambda f: f.__name__)
def test_class_and_row_permutations(fn):
    lp = _random_log_probs(40, 4, 6, seed=5, zeros=True)
    base = fn(lp)
    rng = np.random.default_rng(0)
    class_perm = rng.permutation(6)
    np.testing.assert_allclose(fn(lp[:, :, class_perm]), base, atol=1e-12, rtol=0)
    row_perm = rng.permutation(40)
    np.testing.assert_array_equal(fn(lp[row_perm]), base[row_perm])
    sample_perm = rng.permutation(4)  # MC samples / members are exchangeable
    np.testing.assert_allclose(fn(lp[:, sample_perm]), base, atol=1e-12, rtol=0)


def test_chunked_equals_unchunked_bit_for_bit():
    n = 200_000
    lp = _random_log_probs(n, 2, 5, seed=6, dtype=np.float32, zeros=True)
    for fn in ALL_FNS:
        whole = fn(lp, chunk_rows=n)
        np.testing.assert_array_equal(fn(lp, chunk_rows=7_777), whole, err_msg=fn.__name__)
        np.testing.assert_array_equal(fn(lp), whole, err_msg=fn.__name__)  # default chunking
    tiny = lp[:300]
    for fn in ALL_FNS:
        np.testing.assert_array_equal(fn(tiny, chunk_rows=1), fn(tiny, chunk_rows=300), err_msg=fn.__name__)


def test_non_contiguous_input():
    lp = _random_log_probs(30, 3, 4, seed=7)
    view = np.asfortranarray(lp)[::2]
    for fn in ALL_FNS:
        np.testing.assert_array_equal(fn(view), fn(np.ascontiguousarray(view)), err_msg=fn.__name__)


# -- properties (hypothesis) ------------------------------------------------------------


@st.composite
def log_prob_arrays(draw):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(1, 6))
    c = draw(st.integers(2, 6))
    logits = draw(hnp.arrays(np.float64, (n, k, c), elements=st.floats(-40, 40)))
    dead = draw(hnp.arrays(np.bool_, (n, k, c)))
    dead[..., 0] = False  # at least one class possible per sample
    logits = np.where(dead, -np.inf, logits)
    top = logits.max(axis=2, keepdims=True)
    lp = logits - top - np.log(np.exp(logits - top).sum(axis=2, keepdims=True))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return lp.astype(dtype)


@settings(max_examples=150, deadline=None)
@given(log_prob_arrays())
def test_scores_are_finite_and_within_their_bounds(lp):
    _, k, c = lp.shape
    eps = 1e-5 if lp.dtype == np.float32 else 1e-9
    got = {fn.__name__: fn(lp) for fn in SCORE_FNS}
    for name, v in got.items():
        assert v.dtype == np.float64 and np.isfinite(v).all() and (v >= 0).all(), name
    assert (got["entropy"] <= math.log(c) + eps).all()
    assert (got["expected_entropy"] <= got["entropy"] + eps).all()  # concavity of H
    assert (got["bald"] <= got["entropy"] + eps).all()
    assert (got["bald"] <= math.log(k) + eps).all()
    np.testing.assert_allclose(got["consensus_kl"], got["bald"], atol=10 * eps)
    assert (got["least_confidence"] <= 1 - 1 / c + eps).all()
    assert (got["raw_margin"] <= 1).all() and (got["margin"] <= 1).all()
    np.testing.assert_allclose(got["margin"] + got["raw_margin"], 1.0, atol=1e-12)
    assert (got["variation_ratios"] <= 1 - 1 / k + 1e-12).all()
    assert (got["vote_entropy"] <= math.log(min(k, c)) + 1e-12).all()
    assert (got["mean_std"] <= 0.5 + eps).all()
    plp = scores.predictive_log_probs(lp)
    assert (plp <= eps).all()
    np.testing.assert_allclose(np.log(np.exp(plp).sum(axis=1)), 0.0, atol=10 * eps)


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[[0.0, 0.0]]], "must be a numpy array of shape [N, K, C]; got list"),
        (np.zeros((5, 3)), "log_probs must be [N, K, C]; got shape (5, 3)"),
        (np.zeros((5, 0, 3)), "at least one sample (K >= 1)"),
        (np.zeros((5, 2, 1)), "at least 2 classes (C >= 2)"),
        (np.zeros((5, 2, 3), np.int64), "floating array of natural-log probabilities; got dtype int64"),
    ],
)
def test_shape_and_dtype_errors(bad, message):
    for fn in ALL_FNS:
        with pytest.raises(AlscaleError) as err:
            fn(bad)
        assert message in str(err.value), fn.__name__


def test_value_errors_name_the_problem():
    lp = _random_log_probs(10, 2, 3, seed=8)
    nan = lp.copy()
    nan[4, 1, 2] = np.nan
    with pytest.raises(AlscaleError, match=r"NaN at row 4, sample 1, class 2"):
        scores.entropy(nan)
    pos_inf = lp.copy()
    pos_inf[3, 0, 1] = np.inf
    with pytest.raises(AlscaleError, match=r"found inf at row 3, sample 0, class 1"):
        scores.bald(pos_inf)
    logits = np.random.default_rng(0).normal(size=(10, 2, 3)) + 1.0
    with pytest.raises(AlscaleError, match=r"all <= 0.*log_softmax\(logits\)"):
        scores.margin(logits)
    probs = np.exp(lp)
    with pytest.raises(AlscaleError, match=r"not logits or probabilities"):
        scores.entropy(probs)
    unnormalised = lp - 0.5  # all <= 0 but the probabilities sum to e^-0.5
    with pytest.raises(AlscaleError, match=r"at row 0, sample 0 the probabilities sum to 0.606531"):
        scores.entropy(unnormalised)
    negative_logits = np.log([[[0.3, 0.1, 0.05]]])  # all <= 0, sum 0.45
    with pytest.raises(AlscaleError, match=r"the probabilities sum to 0.45: pass log_softmax"):
        scores.entropy(negative_logits)
    # slightly off (rounded probabilities, float16 storage) is accepted
    rounded = np.log(np.round(np.exp(lp), 1) + 1e-3)
    assert np.isfinite(scores.entropy(rounded)).all()
    assert np.isfinite(scores.entropy(lp.astype(np.float16))).all()
    dead = lp.copy()
    dead[0, 1, :] = -np.inf  # a sample with no possible class
    with pytest.raises(AlscaleError, match=r"row 0, sample 1 the probabilities sum to 0"):
        scores.vote_entropy(dead)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(AlscaleError, match="chunk_rows must be a positive integer"):
            scores.entropy(lp, chunk_rows=bad)


# -- stochastic batch acquisition keys (Kirsch et al., TMLR 2023) ------------------------


def test_key_transforms():
    s = np.array([0.0, 0.5, 2.0])
    g = np.array([0.1, -0.2, 0.3])
    np.testing.assert_allclose(scores.power_keys(s[1:], g[1:], 2.0), 2.0 * np.log(s[1:]) + g[1:])
    assert np.isfinite(scores.power_keys(s, g, 1.0)).all()
    assert scores.power_keys(s, g, 1.0).argmin() == 0  # a zero score is picked last
    np.testing.assert_allclose(scores.softmax_keys(s, g, 3), 3 * s + g)
    ranks = np.array([1, 2, 10])
    np.testing.assert_allclose(scores.softrank_keys(ranks, g, 0.5), -0.5 * np.log(ranks) + g)
    for fn in (scores.power_keys, scores.softmax_keys, scores.softrank_keys):
        assert fn(np.ones(0), np.ones(0), 1.0).shape == (0,)


@pytest.mark.parametrize(
    "transform, beta, values, probs",
    [
        ("power", 2.0, [1.0, 2.0, 3.0, 0.5], np.array([1.0, 4.0, 9.0, 0.25])),
        ("softmax", 1.5, [0.0, 1.0, -1.0, 0.5], np.exp(1.5 * np.array([0.0, 1.0, -1.0, 0.5]))),
        ("softrank", 1.0, [1, 2, 3, 4], np.array([1.0, 1 / 2, 1 / 3, 1 / 4])),
    ],
)
def test_gumbel_top_1_samples_with_the_stated_probabilities(transform, beta, values, probs):
    trials, n = 40_000, len(values)
    g = noise.keyed_gumbel(11, 0, np.arange(trials * n)).reshape(trials, n)
    v = np.tile(np.asarray(values, np.float64), trials)
    fn = getattr(scores, f"{transform}_keys")
    keys = fn(v, g.ravel(), beta).reshape(trials, n)
    freq = np.bincount(keys.argmax(axis=1), minlength=n) / trials
    expect = probs / probs.sum()
    sigma = np.sqrt(expect * (1 - expect) / trials)
    assert (np.abs(freq - expect) < 5 * sigma).all(), (freq, expect)


def test_key_validation():
    ok, g = np.array([0.2, 0.3]), np.zeros(2)
    for bad_beta in (0, -1.0, float("nan"), float("inf"), True, "1", None):
        with pytest.raises(AlscaleError, match="beta must be a positive number"):
            scores.power_keys(ok, g, bad_beta)
    with pytest.raises(AlscaleError, match=r"power sampling needs non-negative scores; scores\[1\] = -0.1"):
        scores.power_keys(np.array([0.2, -0.1]), g, 1.0)
    with pytest.raises(AlscaleError, match=r"ranks must be >= 1.*ranks\[0\] = 0"):
        scores.softrank_keys(np.array([0, 1]), g, 1.0)
    with pytest.raises(AlscaleError, match=r"gumbel must have the shape of scores; got \(3,\) and \(2,\)"):
        scores.softmax_keys(ok, np.zeros(3), 1.0)
    with pytest.raises(AlscaleError, match=r"scores must be finite; scores\[0\] = nan"):
        scores.softmax_keys(np.array([np.nan, 1.0]), g, 1.0)
    with pytest.raises(AlscaleError, match=r"scores must be 1-D \[N\]; got shape \(2, 1\)"):
        scores.softmax_keys(ok[:, None], g, 1.0)
    with pytest.raises(AlscaleError, match="scores must be a 1-D numpy array; got list"):
        scores.softmax_keys([0.1, 0.2], g, 1.0)
    with pytest.raises(AlscaleError, match="gumbel must hold real numbers; got dtype bool"):
        scores.softmax_keys(ok, np.zeros(2, bool), 1.0)
