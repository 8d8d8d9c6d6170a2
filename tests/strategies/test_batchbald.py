"""Greedy BatchBALD: REFERENCES §1 fixtures, sampled estimates, exactness of the pruned sharded
loop, invariance (shards, chunks, pruning, executors), properties and validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import alscale
from alscale.errors import AlscaleError
from alscale.jobspec import validate_job
from alscale.strategies import FanoutShards, InProcessFanout, ShardState, batchbald, registry, scores
from alscale.strategies import joint_entropy as je
from alscale.strategies.batchbald import batchbald_loop, check_options, prefilter_loop

K_FIX = 20


def _mix(p1: list[float], p2: list[float]) -> np.ndarray:
    """REFERENCES §1: sample k is (1 - m_k) p1 + m_k p2, m = linspace(0, 1, 20); log [K, C]."""
    m = np.linspace(0, 1, K_FIX)[:, None]
    with np.errstate(divide="ignore"):
        return np.log((1 - m) * np.array(p1) + m * np.array(p2))


FIXTURE_1 = np.stack(
    [
        _mix([0.7, 0.1, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]),
        _mix([0.1, 0.7, 0.1, 0.1], [0.2, 0.3, 0.3, 0.2]),
        _mix([0.1, 0.1, 0.7, 0.1], [0.2, 0.2, 0.3, 0.3]),
        _mix([0.1, 0.1, 0.1, 0.7], [0.3, 0.2, 0.2, 0.3]),
    ]
)
FIXTURE_2 = np.stack(
    [_mix([0.1, 0.2, 0.2, 0.5], [0.5, 0.2, 0.1, 0.2]), _mix([0.1, 0.6, 0.2, 0.1], [0, 0.5, 0.5, 0])] * 4
)
EXACT = 10**6  # max_configs that keeps every fixture exact


def _log_probs(n: int, k: int, c: int, seed: int, spread: float = 1.5) -> np.ndarray:
    """Rows with varied confidence and varied disagreement between samples (float32)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1, c))
    base[np.arange(n), 0, rng.integers(0, c, size=n)] += rng.uniform(0, 6, size=n)
    x = base + rng.uniform(0, spread, size=(n, 1, 1)) * rng.normal(size=(n, k, c))
    x -= x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def _sharded(lp: np.ndarray, n_shards: int, row_ids: np.ndarray | None = None, labeled=()) -> FanoutShards:
    n = lp.shape[0]
    row_ids = np.arange(n, dtype=np.int64) if row_ids is None else row_ids
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    states = [ShardState(row_ids[a:b], lp[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    shards = FanoutShards(InProcessFanout(states))
    shards.exclude(np.asarray(labeled, dtype=np.int64))
    return shards


def _opts(**over) -> dict:
    return registry.check_options("batchbald", over)


# -- REFERENCES §1 fixtures ----------------------------------------------------------------


def test_fixture_1_bald_and_conditional_entropy():
    assert scores.expected_entropy(FIXTURE_1) == pytest.approx([1.2069] * 4, abs=1e-4)
    assert scores.entropy(FIXTURE_1) == pytest.approx([1.2376] * 4, abs=1e-4)
    assert scores.bald(FIXTURE_1) == pytest.approx([0.030716] * 4, abs=1e-6)
    assert [je.row_expected_entropy(r) for r in FIXTURE_1] == pytest.approx([1.2069] * 4, abs=1e-4)


def test_fixture_1_greedy_cumulative_scores():
    sel = alscale.select("batchbald", budget=4, log_probs=FIXTURE_1, num_samples=1000)
    np.testing.assert_allclose(sel.scores, [0.030716, 0.059620, 0.086911, 0.112753], atol=1e-6)
    assert sorted(sel.indices.tolist()) == [0, 1, 2, 3]


def test_fixture_joint_entropies():
    assert je.joint_entropy(FIXTURE_1, max_configs=EXACT) == pytest.approx(4.9403, abs=1e-4)
    uniform = np.log(np.full((4, K_FIX, 4), 0.25))
    assert je.joint_entropy(uniform) == pytest.approx(4 * np.log(4), abs=1e-12)  # 4^4 <= 1000: exact
    assert je.joint_entropy(FIXTURE_2[:4], max_configs=EXACT) == pytest.approx(4.6479, abs=1e-4)
    with_each = je.joint_entropies_with(FIXTURE_2[:4], FIXTURE_2, max_configs=EXACT)
    np.testing.assert_allclose(with_each, [5.9735, 5.6362] * 4, atol=1e-4)
    assert je.joint_entropy(FIXTURE_2, max_configs=EXACT) == pytest.approx(9.2667, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_estimates_are_close_to_exact(seed):
    # Sampled from the first row on (max_configs=1). The estimate is a mean of -log p(ŷ_m)
    # (plus, with a candidate, of H(y | ŷ_m)); on this fixture their standard deviation is
    # ~1.4 nats, so with M = 20,000 stratified samples the standard error is <= 0.01:
    # a tolerance of 0.05 is 5 standard errors (fixed seeds, so the test is deterministic).
    est = je.joint_entropy(FIXTURE_2, max_configs=1, num_samples=20_000, seed=seed)
    assert est == pytest.approx(9.2667, abs=0.05)
    with_each = je.joint_entropies_with(FIXTURE_2[:4], FIXTURE_2, max_configs=1, num_samples=20_000, seed=seed)
    np.testing.assert_allclose(with_each, [5.9735, 5.6362] * 4, atol=0.05)
    # ... and a different seed really gives a different estimate (the samples are keyed).
    assert est != je.joint_entropy(FIXTURE_2, max_configs=1, num_samples=20_000, seed=seed + 10)


def test_sampled_state_is_the_same_built_pick_by_pick_or_at_the_switch():
    a = je.BatchJoint.empty(K_FIX, 4, max_configs=1, num_samples=300, seed=5, round=2)  # sampled from n = 1
    b = je.BatchJoint.empty(K_FIX, 4, max_configs=16, num_samples=300, seed=5, round=2)  # switches at n = 3
    for row in FIXTURE_2[:5]:
        a.extend(row)
        b.extend(row)
    assert a.mode == b.mode == "sampled"
    np.testing.assert_array_equal(a.log_joint_M_K, b.log_joint_M_K)
    np.testing.assert_array_equal(a.weights_M, b.weights_M)
    assert a.entropy == b.entropy


# -- kernels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k, c", [(100, 10), (20, 100), (4, 3)])
def test_fast_kernel_within_its_error_bound_and_bounds_hold(k, c):
    lp = _log_probs(200, k, c, seed=k + c, spread=3.0)
    lp[:40, :, :2] -= 60  # tiny probabilities
    lp[:40] -= np.log(np.exp(lp[:40].astype(np.float64)).sum(-1, keepdims=True)).astype(np.float32)
    lp[3, :, 1] = -np.inf  # exact zeros
    state = je.BatchJoint.empty(k, c, max_configs=1, num_samples=400, seed=1)
    for row in lp[150:154]:
        state.extend(row)
    post_T = np.ascontiguousarray(state.post_M_K.T)
    ref = np.array([je.row_conditional_entropy(post_T, state.weights_M, r) for r in lp])
    probs = torch.from_numpy(np.exp(lp)).transpose(1, 2).contiguous()
    post_t = torch.from_numpy(state.post_M_K.T.astype(np.float32)).contiguous()
    fast = je.chunk_conditional_entropies(post_t, torch.from_numpy(state.weights_M), probs).numpy()
    bound = je.fast_error_bound(k, c)
    assert np.abs(fast - ref).max() <= bound
    eh_fast = je.chunk_expected_entropies(torch.from_numpy(lp), torch.from_numpy(np.exp(lp))).numpy()
    eh_ref = np.array([je.row_expected_entropy(r) for r in lp])
    assert np.abs(eh_fast - eh_ref).max() <= bound
    # Jensen: one group and KL-k-means groups both bound every row's conditional entropy.
    for n_groups in (1, 7, 50):
        labels = je.group_configs(state.post_M_K, state.weights_M, n_groups)
        centres, masses = je.grouped_state(state.post_M_K, state.weights_M, labels)
        assert masses.sum() == pytest.approx(1.0)
        ub = np.array([je.row_conditional_entropy(np.ascontiguousarray(centres.T), masses, r) for r in lp])
        assert np.all(ub >= ref - 1e-12)


@pytest.mark.parametrize("k, c, m", [(20, 10, 1000), (4, 3, 60), (100, 10, 400), (8, 130, 9000)])
def test_float64_kernel_within_its_error_bound(k, c, m):
    """The float64 stage (rows the float32 path cannot separate) is within its ~1e-12 bound of
    the reference gain, tiny probabilities and exact zeros included, deep into a long batch."""
    lp = _log_probs(120, k, c, seed=k + c + m, spread=3.0)
    lp[:20, :, :2] -= 60  # tiny probabilities
    lp[:20] -= np.log(np.exp(lp[:20].astype(np.float64)).sum(-1, keepdims=True)).astype(np.float32)
    lp[3, :, 1] = -np.inf  # exact zeros
    state = je.BatchJoint.empty(k, c, max_configs=1, num_samples=m, seed=1)
    for row in lp[60:90]:  # a long batch: posteriors near one-hot, gains near 0
        state.extend(row)
    post_T = np.ascontiguousarray(state.post_M_K.T)
    ref = np.array([je.row_conditional_entropy(post_T, state.weights_M, r) - je.row_expected_entropy(r) for r in lp])
    got = je.float64_gains(torch.from_numpy(post_T), torch.from_numpy(state.weights_M),
                           torch.from_numpy(lp.astype(np.float64))).numpy()
    bound = je.float64_error_bound(k, c, state.n_configs)
    assert np.abs(got - ref).max() <= bound < 1e-9
    work = torch.full((2 * 120 * c * state.n_configs + 7,), np.nan, dtype=torch.float64)  # a reused workspace
    again = je.float64_gains(torch.from_numpy(post_T), torch.from_numpy(state.weights_M),
                             torch.from_numpy(lp.astype(np.float64)), work).numpy()
    assert again.tobytes() == got.tobytes()
    assert bound < je.fast_error_bound(k, c) / 1000


def test_reference_kernel_ignores_grouping_and_layout():
    lp = _log_probs(30, 8, 5, seed=3)
    state = je.BatchJoint.empty(8, 5, max_configs=1, num_samples=64, seed=0)
    state.extend(lp[0])
    post_T = np.ascontiguousarray(state.post_M_K.T)
    one = [je.row_conditional_entropy(post_T, state.weights_M, lp[i]) for i in range(30)]
    again = [je.row_conditional_entropy(post_T.copy(), state.weights_M.copy(), np.array(lp[i], order="F"))
             for i in range(30)]
    assert np.array(one).tobytes() == np.array(again).tobytes()


# -- the loop: exactness and invariance ----------------------------------------------------------


def test_b1_equals_bald_top_pick():
    lp = _log_probs(500, 12, 6, seed=4)
    sel = alscale.select("batchbald", budget=1, log_probs=lp)
    bald = scores.bald(lp)
    assert sel.indices.tolist() == [int(np.argmax(bald))]
    # scores.bald exponentiates float32 input in float32; the reference kernel in float64
    assert sel.scores[0] == pytest.approx(bald.max(), abs=1e-6)


def _brute_force_greedy(lp: np.ndarray, budget: int, num_samples: int, seed: int) -> list[int]:
    """Each step's argmax of the reference gain over all rows not picked yet."""
    state = je.BatchJoint.empty(*lp.shape[1:], num_samples=num_samples, seed=seed)
    picked: list[int] = []
    for _ in range(budget):
        post_T = np.ascontiguousarray(state.post_M_K.T)
        gains = np.array(
            [je.row_conditional_entropy(post_T, state.weights_M, r) - je.row_expected_entropy(r) for r in lp]
        )
        gains[picked] = -np.inf
        picked.append(int(np.argmax(gains)))
        state.extend(lp[picked[-1]])
    return picked


def test_pruned_loop_equals_brute_force_greedy(grouping):
    """Every step's pick is the argmax of the reference gain over all rows (brute force)."""
    lp = _log_probs(120, 6, 4, seed=6)
    opts = _opts(num_samples=40)  # exact for n <= 2, sampled after
    sel, _ = batchbald_loop(_sharded(lp, 3), 6, options=opts, seed=2)
    assert sel.indices.tolist() == _brute_force_greedy(lp, 6, num_samples=40, seed=2)


def test_a_saturated_batch_goes_through_the_float64_stage_and_stays_exact(monkeypatch, caplog):
    """Past the ``log K`` ceiling every gain is within the float32 margin of the best; the
    float64 stage must narrow those rows without changing a pick or a score bit, and the
    picks stay the brute-force argmax of the reference gain."""
    lp = _log_probs(150, 4, 3, seed=21, spread=3.0)
    calls: list[tuple[int, int]] = []
    refine = batchbald._refine_float64

    def spy(state, cache, post, weights, rows):
        kept = refine(state, cache, post, weights, rows)
        calls.append((rows.size, kept.size))
        return kept

    monkeypatch.setattr(batchbald, "_refine_float64", spy)
    opts = _opts(num_samples=60)
    with caplog.at_level("WARNING", logger="alscale.strategies.batchbald"):
        sel, stats = batchbald_loop(_sharded(lp, 2), 24, options=opts, seed=4)
    assert calls and max(n for n, _ in calls) > 20, calls  # the float32 path could not separate them
    said = [r.getMessage() for r in caplog.records if "has reached its ceiling log K = 1.39" in r.getMessage()]
    assert len(said) == 1, caplog.text  # said once, naming the fix
    assert "use more samples (model.mc_samples) or a smaller budget" in said[0]
    assert sum(s["reference"] for s in stats.steps) < sum(n for n, _ in calls)
    monkeypatch.setattr(batchbald, "_REFINE_MIN_ROWS", 10**9)  # the float64 stage off
    plain, plain_stats = batchbald_loop(_sharded(lp, 3), 24, options=opts, seed=4)
    np.testing.assert_array_equal(sel.indices, plain.indices)
    assert sel.scores.tobytes() == plain.scores.tobytes()
    assert sel.indices.tolist() == _brute_force_greedy(lp, 24, num_samples=60, seed=4)


CASES = [  # (U, K, C, budget, num_samples): exact, mixed, and sampled-early regimes
    (400, 10, 5, 8, 1000),
    (300, 16, 4, 6, 50),
    (250, 5, 3, 12, 30),
]


@pytest.fixture(params=[False, True], ids=["auto-groups", "groups-always"])
def grouping(request, monkeypatch):
    """Run with the grouped (second-stage) bound as configured, and forced on at every step."""
    if request.param:
        monkeypatch.setattr(batchbald, "_FORCE_GROUPS", True)
        monkeypatch.setattr(batchbald, "_GROUPED_MIN_CONFIGS", 4)
    return request.param


@pytest.mark.parametrize("u, k, c, budget, m", CASES)
def test_identical_picks_and_score_bits_for_any_shards_chunks_and_pruning(u, k, c, budget, m, grouping):
    lp = _log_probs(u, k, c, seed=u)
    row_ids = np.random.default_rng(1).permutation(10 * u)[:u].astype(np.int64)
    labeled = row_ids[::11]
    ref = None
    for n_shards, chunk_rows, prune in [(1, None, True), (2, 3, True), (7, 1, True), (7, None, False), (2, 64, False)]:
        sel, stats = batchbald_loop(
            _sharded(lp, n_shards, row_ids, labeled),
            budget,
            options=_opts(num_samples=m, chunk_rows=chunk_rows, prune=prune),
            seed=11,
            round=3,
        )
        assert stats.round_trips == 1 + budget  # set-up + one fan-out per pick
        if ref is None:
            ref = sel
            assert len(set(sel.indices.tolist())) == budget and not np.isin(sel.indices, labeled).any()
        else:
            np.testing.assert_array_equal(sel.indices, ref.indices)
            assert sel.scores.tobytes() == ref.scores.tobytes()


def test_seed_changes_the_sampled_picks_only_when_sampling():
    lp = _log_probs(300, 10, 4, seed=9)
    a = alscale.select("batchbald", budget=8, log_probs=lp, num_samples=30, seed=1)
    b = alscale.select("batchbald", budget=8, log_probs=lp, num_samples=30, seed=2)
    assert a.indices[:3].tolist() == b.indices[:3].tolist()  # 4^2 <= 30: exact for the first 3 picks
    assert a.scores[:3].tobytes() == b.scores[:3].tobytes()
    assert a.scores.tobytes() != b.scores.tobytes()


def test_budget_larger_than_candidates_picks_each_once_and_skips_labelled():
    lp = _log_probs(9, 6, 3, seed=2)
    sel = alscale.select("batchbald", budget=20, log_probs=lp, labeled=[0, 4], num_samples=50)
    assert sorted(sel.indices.tolist()) == [1, 2, 3, 5, 6, 7, 8]
    assert np.all(np.isfinite(sel.scores))


def test_duplicate_rows_tie_to_the_lower_row_id_and_are_never_picked_twice():
    lp = _log_probs(50, 8, 4, seed=5)
    lp[30] = lp[10]
    lp[45] = lp[10]
    bald = scores.bald(lp)
    lp[[10, 30, 45]] = lp[int(np.argmax(bald))]  # three copies of the best row
    sel = alscale.select("batchbald", budget=6, log_probs=lp)
    picked = sel.indices.tolist()
    assert len(set(picked)) == 6
    assert picked[0] == min(10, int(np.argmax(bald)))


def test_prefilter_mode():
    lp = _log_probs(600, 10, 5, seed=12)
    full = alscale.select("batchbald", budget=6, log_probs=lp, num_samples=200, seed=3)
    same = alscale.select("batchbald_prefilter", budget=6, log_probs=lp, num_samples=200, seed=3, prefilter=600)
    np.testing.assert_array_equal(same.indices, full.indices)
    assert same.scores.tobytes() == full.scores.tobytes() and same.strategy == "batchbald_prefilter"
    top = set(np.argsort(-scores.bald(lp), kind="stable")[:40].tolist())
    parts = []
    for n_shards in (1, 4):
        sel, stats = prefilter_loop(_sharded(lp, n_shards), 6, options=_opts(num_samples=200) | {"prefilter": 40},
                                    seed=3)
        assert set(sel.indices.tolist()) <= top and stats.round_trips == 4
        parts.append(sel)
    np.testing.assert_array_equal(parts[0].indices, parts[1].indices)


# -- validation and exposure -------------------------------------------------------------------


def test_validation_errors():
    lp = _log_probs(20, 4, 3, seed=0)
    with pytest.raises(AlscaleError, match="num_samples .* integer in"):
        alscale.select("batchbald", budget=2, log_probs=lp, num_samples=0)
    with pytest.raises(AlscaleError, match="max_configs"):
        check_options(_opts() | {"max_configs": 10**9})
    with pytest.raises(AlscaleError, match="device"):
        alscale.select("batchbald", budget=2, log_probs=lp, device="tpu")
    with pytest.raises(AlscaleError, match="prune"):
        alscale.select("batchbald", budget=2, log_probs=lp, prune="yes")
    with pytest.raises(AlscaleError, match="unknown option 'beta'"):
        alscale.select("batchbald", budget=2, log_probs=lp, beta=1.0)
    with pytest.raises(AlscaleError, match="prefilter"):
        alscale.select("batchbald_prefilter", budget=2, log_probs=lp, prefilter=0)
    with pytest.raises(AlscaleError, match=r"K >= 2"):
        alscale.select("batchbald", budget=2, log_probs=lp[:, 0, :])
    with pytest.raises(AlscaleError, match="normalised"):
        alscale.select("batchbald", budget=2, log_probs=lp - 1.0)
    with pytest.raises(AlscaleError, match="budget"):
        alscale.select("batchbald", budget=0, log_probs=lp)
    with pytest.raises(AlscaleError, match=r"\[N, C\] or \[N, K, C\]"):
        je.joint_entropy(np.zeros((2, 3, 4, 5)))
    with pytest.raises(AlscaleError, match="batch's are"):
        je.joint_entropies_with(lp[:2], _log_probs(3, 5, 3, seed=1))


def test_job_yaml_options_are_validated():
    raw = {
        "pool": {"path": "pool.arrow"},
        "model": {"factory": "mnist_cnn", "mc_samples": 100},
        "strategy": {"name": "batchbald", "budget": 10, "options": {"num_samples": 1000, "max_configs": 1000}},
        "runtime": {"executor": "local", "shards": 1},
    }
    job = validate_job(raw)
    assert job.strategy.options["num_samples"] == 1000 and job.strategy.options["prune"] is True
    raw["strategy"]["options"] = {"num_samples": -1}
    with pytest.raises(AlscaleError, match="num_samples"):
        validate_job(raw)
