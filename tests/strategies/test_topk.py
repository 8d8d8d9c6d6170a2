"""The sharded top-k loops against brute force on the whole pool (exactness, tie rule, shard invariance)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import alscale
from alscale.errors import AlscaleError
from alscale.strategies import FanoutShards, InProcessFanout, ShardState, noise, scores, select_by_score
from alscale.strategies.shards import merge_topk, topk_order


def _log_probs(n: int, k: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k, c)).astype(np.float32) * 2
    return (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)


def _sharded(log_probs, n_shards, row_ids=None, labeled=()):
    n = log_probs.shape[0]
    row_ids = np.arange(n, dtype=np.int64) if row_ids is None else row_ids
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    states = [ShardState(row_ids[a:b], log_probs[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    shards = FanoutShards(InProcessFanout(states))
    shards.exclude(np.asarray(labeled, dtype=np.int64))
    return shards


def _brute(scores_N, row_ids_N, labeled, k):
    keep = ~np.isin(row_ids_N, np.asarray(labeled, dtype=np.int64))
    s, r = scores_N[keep], row_ids_N[keep]
    order = sorted(range(len(s)), key=lambda i: (-s[i], r[i]))[:k]
    return s[order], r[order]


def test_topk_order_breaks_ties_by_row_id():
    s = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    ids = np.array([9, 7, 2, 5, 4])
    assert ids[topk_order(s, ids, 2)].tolist() == [2, 4]
    assert ids[topk_order(s, ids, 5)].tolist() == [2, 4, 7, 5, 9]


def test_merge_topk_is_exact_with_ties_across_shards():
    parts = [(np.array([5.0, 4.0]), np.array([10, 3])), (np.array([5.0, 4.0]), np.array([1, 2]))]
    s, r = merge_topk(parts, 3)
    assert r.tolist() == [1, 10, 2] and s.tolist() == [5.0, 5.0, 4.0]


@pytest.mark.parametrize("strategy", ["entropy", "margin", "least_confidence", "bald", "random", "power", "softmax"])
@pytest.mark.parametrize("n_shards", [1, 2, 7])
def test_sharded_selection_equals_brute_force(strategy, n_shards):
    lp = _log_probs(3000, 4, 5, seed=1)
    row_ids = np.random.default_rng(2).permutation(10_000)[:3000].astype(np.int64)  # arbitrary unique ids
    labeled = row_ids[::17]
    sel = select_by_score(_sharded(lp, n_shards, row_ids, labeled), strategy, 123, seed=5, round=2)
    if strategy == "random":
        expect = noise.keyed_uniform(5, 2, row_ids)
    elif strategy in ("power", "softmax"):
        g = noise.keyed_gumbel(5, 2, row_ids)
        fn = scores.power_keys if strategy == "power" else scores.softmax_keys
        expect = fn(scores.entropy(lp), g, 1.0)
    else:
        expect = getattr(scores, strategy)(lp) if strategy != "margin" else scores.margin(lp)
    s, r = _brute(expect, row_ids, labeled, 123)
    np.testing.assert_array_equal(sel.indices_B, r)
    np.testing.assert_allclose(sel.scores_B, s, rtol=0, atol=0)


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("n_shards", [1, 3, 7])
def test_softrank_is_exact_gumbel_top_k_of_global_rank(beta, n_shards):
    lp = _log_probs(2000, 1, 4, seed=3)
    row_ids = np.arange(1000, 3000, dtype=np.int64)
    labeled = row_ids[5::11]
    sel = select_by_score(_sharded(lp, n_shards, row_ids, labeled), "softrank", 50, seed=9, options={"beta": beta})
    keep = ~np.isin(row_ids, labeled)
    base, ids = scores.entropy(lp)[keep], row_ids[keep]
    rank = np.empty(ids.shape[0])
    rank[np.lexsort((ids, -base))] = np.arange(1, ids.shape[0] + 1)
    keys = scores.softrank_keys(rank, noise.keyed_gumbel(9, 0, ids), beta)
    s, r = _brute(keys, ids, [], 50)
    np.testing.assert_array_equal(sel.indices_B, r)
    np.testing.assert_allclose(sel.scores_B, s)


def test_softrank_handles_tied_base_scores():
    lp = np.log(np.full((300, 1, 3), 1 / 3, dtype=np.float32))  # every entropy equal: ranks by row_id
    a = select_by_score(_sharded(lp, 1), "softrank", 20, seed=1)
    b = select_by_score(_sharded(lp, 4), "softrank", 20, seed=1)
    np.testing.assert_array_equal(a.indices_B, b.indices_B)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 120),
    budget=st.integers(1, 150),
    n_shards=st.integers(1, 9),
    n_labeled=st.integers(0, 130),
    strategy=st.sampled_from(["entropy", "margin", "random", "softrank", "power"]),
    seed=st.integers(0, 2**31),
)
def test_selection_properties(n, budget, n_shards, n_labeled, strategy, seed):
    lp = _log_probs(n, 1, 3, seed=seed % 1000)
    # coarse values make ties common
    lp = np.log(np.round(np.exp(lp), 1) + 1e-3).astype(np.float32)
    labeled = np.random.default_rng(seed).choice(n, size=min(n_labeled, n), replace=False)
    ref = select_by_score(_sharded(lp, 1, labeled=labeled), strategy, budget, seed=seed)
    sel = select_by_score(_sharded(lp, min(n_shards, n), labeled=labeled), strategy, budget, seed=seed)
    picked = sel.indices_B
    assert len(set(picked.tolist())) == len(picked)  # no duplicates
    assert not np.isin(picked, labeled).any()  # nothing labelled
    assert len(picked) == min(budget, n - len(labeled))  # size
    assert np.all(np.diff(sel.scores_B) <= 0)  # pick order
    np.testing.assert_array_equal(picked, ref.indices_B)  # shard-count invariance


def test_in_memory_api_matches_known_ranking():
    p = np.array([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.6, 0.2, 0.2]])
    sel = alscale.select("entropy", budget=2, log_probs=np.log(p))
    assert sel.indices.tolist() == [2, 0]
    assert sel.scores[1] == pytest.approx(1.0297, abs=1e-4)
    sel = alscale.select("least_confidence", budget=4, log_probs=np.log(p), labeled=[2])
    assert sel.indices.tolist() == [0, 3, 1]


def test_in_memory_api_validates():
    lp = np.log(np.full((4, 3), 1 / 3))
    with pytest.raises(AlscaleError, match="budget"):
        alscale.select("entropy", budget=0, log_probs=lp)
    with pytest.raises(AlscaleError, match="unknown strategy 'nope'"):
        alscale.select("nope", budget=1, log_probs=lp)
    with pytest.raises(AlscaleError, match=r"K >= 2"):
        alscale.select("bald", budget=1, log_probs=lp)
    bad = lp.copy()
    bad[2, 1] = np.nan
    with pytest.raises(AlscaleError, match=r"non-finite .* index \(2, 0, 1\)"):
        alscale.select("entropy", budget=1, log_probs=bad)
    with pytest.raises(AlscaleError, match="outside the pool"):
        alscale.select("entropy", budget=1, log_probs=lp, labeled=[7])
