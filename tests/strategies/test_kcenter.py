"""Exact k-center greedy against a brute-force oracle: ties, duplicates, labelled rows,
shard counts, backends, gather vs sharded, round trips, the approximate mode and the API."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import alscale
from alscale.errors import AlscaleError
from alscale.index.exact import sq_dist_rows
from alscale.strategies import FanoutShards, InProcessFanout, ShardState, check_options, run_strategy
from alscale.strategies.kcenter import kcenter_approx, kcenter_greedy
from tests.strategies.pools import make_shards


def oracle(x: np.ndarray, row_ids: np.ndarray, labeled_ids, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain O(N·B) greedy in float64 (Gonzalez 1985); ties to the lower row_id.

    No labelled rows: the first pick is the row nearest to the mean (math.fsum column sums).
    Scores: the distance at pick time (inf for the first pick from the mean).
    """
    x64 = x.astype(np.float64)
    n = x64.shape[0]
    taken = np.isin(row_ids, np.asarray(labeled_ids, dtype=np.int64))
    k = min(budget, n - int(taken.sum()))
    picks: list[int] = []
    scores: list[float] = []

    def argbest(values):
        cand = np.flatnonzero(values == values.max())
        return int(cand[np.argmin(row_ids[cand])])

    if taken.any():
        mind = np.full(n, np.inf)
        for i in np.flatnonzero(taken):
            mind = np.minimum(mind, ((x64 - x64[i]) ** 2).sum(axis=1))
    else:
        mean = np.array([math.fsum(col) for col in x64.T]) / n
        first = argbest(-((x64 - mean) ** 2).sum(axis=1))
        picks.append(int(row_ids[first]))
        scores.append(math.inf)
        taken[first] = True
        mind = ((x64 - x64[first]) ** 2).sum(axis=1)
    while len(picks) < k:
        j = argbest(np.where(taken, -np.inf, mind))
        picks.append(int(row_ids[j]))
        scores.append(math.sqrt(mind[j]))
        taken[j] = True
        mind = np.minimum(mind, ((x64 - x64[j]) ** 2).sum(axis=1))
    return np.asarray(picks, dtype=np.int64), np.asarray(scores)


def sharded(x, n_shards, row_ids=None, labeled=()):
    n = x.shape[0]
    row_ids = np.arange(n, dtype=np.int64) if row_ids is None else row_ids
    bounds = np.linspace(0, n, n_shards + 1).astype(int)
    states = [ShardState(row_ids[a:b], None, x[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    shards = FanoutShards(InProcessFanout(states))
    shards.exclude(np.asarray(labeled, dtype=np.int64))
    return shards


def _backends():
    names = ["numpy", "torch"]
    try:
        import faiss  # noqa: F401

        names.append("faiss")
    except ImportError:
        pass
    return names


def _data(kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        x = rng.standard_normal((2000, 16)).astype(np.float32)
    elif kind == "duplicates":  # 500 distinct rows, many repeated up to 6 times
        base = rng.standard_normal((500, 8)).astype(np.float32)
        x = base[rng.integers(0, 500, 1500)]
    else:  # "grid": 27 distinct points, distances exact in floating point: ties everywhere
        x = rng.integers(0, 3, (600, 3)).astype(np.float32)
    row_ids = rng.permutation(10 * x.shape[0])[: x.shape[0]].astype(np.int64)
    return x, row_ids


CASES = [("gauss", 100), ("duplicates", 120), ("grid", 40)]  # grid: budget > 27 distinct points


@pytest.mark.parametrize("kind, budget", CASES)
@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("n_shards", [1, 2, 7])
def test_sharded_kcenter_equals_brute_force(kind, budget, labelled, n_shards):
    x, row_ids = _data(kind)
    labeled = row_ids[::41] if labelled else []
    expect_ids, expect_scores = oracle(x, row_ids, labeled, budget)
    r = kcenter_greedy(sharded(x, n_shards, row_ids, labeled), budget, backend="numpy", mode="sharded")
    np.testing.assert_array_equal(r.row_ids_B, expect_ids)
    np.testing.assert_array_equal(r.scores_B, expect_scores)  # the same canonical float64 values


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("kind, budget", CASES)
def test_every_backend_and_mode_gives_the_same_selection(backend, kind, budget):
    x, row_ids = _data(kind, seed=1)
    labeled = row_ids[5::97]
    expect_ids, _ = oracle(x, row_ids, labeled, budget)
    for n_shards, mode, offer in [(3, "sharded", None), (3, "gather", None), (2, "sharded", 3), (1, "sharded", 500)]:
        r = kcenter_greedy(sharded(x, n_shards, row_ids, labeled), budget, backend=backend, mode=mode,
                           offer_rows=offer)
        np.testing.assert_array_equal(r.row_ids_B, expect_ids, err_msg=f"{n_shards} {mode} {offer}")
        assert r.stats.mode == mode


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 150),
    d=st.integers(1, 4),
    budget=st.integers(1, 160),
    n_shards=st.integers(1, 7),
    n_labeled=st.integers(0, 20),
    seed=st.integers(0, 2**31),
)
def test_properties_on_tie_heavy_pools(n, d, budget, n_shards, n_labeled, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, d)).astype(np.float32)  # small integers: exact arithmetic, many ties
    row_ids = rng.permutation(3 * n)[:n].astype(np.int64)
    labeled = rng.choice(row_ids, size=min(n_labeled, n), replace=False)
    r = kcenter_greedy(sharded(x, min(n_shards, n), row_ids, labeled), budget, backend="numpy")
    expect_ids, expect_scores = oracle(x, row_ids, labeled, budget)
    np.testing.assert_array_equal(r.row_ids_B, expect_ids)
    np.testing.assert_array_equal(r.scores_B, expect_scores)
    assert len(set(r.row_ids_B.tolist())) == len(r.row_ids_B)
    assert not np.isin(r.row_ids_B, labeled).any()
    assert np.all(np.diff(r.scores_B) <= 0)


def _blobs(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)) * 4
    return (centres[rng.integers(0, 40, n)] + rng.standard_normal((n, d))).astype(np.float32)


def test_round_trips_stay_few():
    x = _blobs(20_000, 16)
    shards = sharded(x, 4, labeled=np.arange(0, 20_000, 1000))
    r = kcenter_greedy(shards, 300, backend="torch", mode="sharded")
    expect_ids, _ = oracle(x, np.arange(20_000), np.arange(0, 20_000, 1000), 300)
    np.testing.assert_array_equal(r.row_ids_B, expect_ids)
    # init + one message per round; rounds certify many picks each
    assert r.stats.round_trips == shards.round_trips - 1  # all but the exclude call
    assert r.stats.round_trips <= 20, r.stats
    assert r.stats.rounds <= 15 and sum(r.stats.picks_per_round) == 300


def _radius(x: np.ndarray, centers: np.ndarray) -> float:
    d = np.full(x.shape[0], np.inf)
    for c in centers:
        d = np.minimum(d, ((x.astype(np.float64) - c) ** 2).sum(1))
    return float(np.sqrt(d.max()))


def test_approximate_mode_is_exact_on_one_shard_and_bounded_on_many():
    x = _blobs(3000, 8, seed=2)
    exact = kcenter_greedy(sharded(x, 1), 60, backend="numpy")
    one = kcenter_approx(sharded(x, 1), 60, backend="numpy")
    np.testing.assert_array_equal(one.row_ids_B, exact.row_ids_B)
    r_exact = _radius(x, x[exact.row_ids_B].astype(np.float64))
    for n_shards in (2, 5):
        approx = kcenter_approx(sharded(x, n_shards, labeled=[3, 4]), 60, backend="numpy")
        ids = approx.row_ids_B
        assert len(ids) == 60 and len(set(ids.tolist())) == 60 and not np.isin(ids, [3, 4]).any()
        assert approx.stats.round_trips <= 4
        r_approx = _radius(x, x[np.concatenate([ids, [3, 4]])].astype(np.float64))
        r_exact_lab = _radius(x, x[np.concatenate([kcenter_greedy(sharded(x, 1, labeled=[3, 4]), 60).row_ids_B,
                                                   [3, 4]])].astype(np.float64))
        # Greedy is a 2-approximation and the union method a 4-approximation of the optimum.
        assert r_exact_lab / 2 <= r_approx <= 4 * r_exact_lab
    assert r_exact > 0


def test_budget_edge_cases():
    x, row_ids = _data("gauss")
    x, row_ids = x[:30], row_ids[:30]
    r = kcenter_greedy(sharded(x, 3, row_ids, row_ids[:10]), 100)
    assert len(r.row_ids_B) == 20  # every unlabelled row
    np.testing.assert_array_equal(r.row_ids_B, oracle(x, row_ids, row_ids[:10], 100)[0])
    none = kcenter_greedy(sharded(x, 2, row_ids, row_ids), 5)
    assert none.row_ids_B.shape == (0,)
    one = kcenter_greedy(sharded(x, 2, row_ids), 1)
    assert one.scores_B.tolist() == [math.inf]


def test_registry_api_and_options():
    x, row_ids = _data("duplicates", seed=3)
    labeled = row_ids[:7]
    expect_ids, expect_scores = oracle(x, row_ids, labeled, 25)
    sel = run_strategy(sharded(x, 2, row_ids, labeled), "core-set", 25, options={"backend": "numpy"})
    assert sel.strategy == "kcenter"
    np.testing.assert_array_equal(sel.indices_B, expect_ids)
    # the in-memory API: positions are the row ids; a labelled mask; float64 input (used as float32)
    mask = np.isin(row_ids, labeled)
    pos = alscale.select("kcenter", budget=25, embeddings=x.astype(np.float64), labeled=mask)
    expect_pos, expect_pos_scores = oracle(x, np.arange(x.shape[0]), np.flatnonzero(mask), 25)
    np.testing.assert_array_equal(pos.indices, expect_pos)
    np.testing.assert_array_equal(pos.scores, expect_pos_scores)
    assert alscale.select("kcenter_approx", budget=5, embeddings=x).indices.shape == (5,)
    assert check_options("kcenter", {"backend": "FAISS"})["backend"] == "faiss"
    with pytest.raises(AlscaleError, match="option backend must be one of auto, numpy, torch, faiss; got 'gpu'"):
        alscale.select("kcenter", budget=2, embeddings=x, backend="gpu")
    with pytest.raises(AlscaleError, match="option mode must be one of auto, sharded, gather"):
        check_options("kcenter", {"mode": "fast"})
    with pytest.raises(AlscaleError, match="option offer_rows must be null"):
        check_options("kcenter", {"offer_rows": 0})
    with pytest.raises(AlscaleError, match="unknown option 'mode' for strategy kcenter_approx"):
        check_options("kcenter_approx", {"mode": "gather"})
    with pytest.raises(AlscaleError, match="strategy kcenter needs embeddings"):
        alscale.select("kcenter", budget=2, log_probs=np.log(np.full((4, 3), 1 / 3)))


def test_many_labelled_rows_in_chunks_and_blocks(monkeypatch):
    """Labelled centers in several messages and center blocks; paged labelled takes."""
    from alscale.strategies import kcenter_loop

    monkeypatch.setattr(kcenter_loop, "CHUNK_BYTES", 8 * 4 * 100)  # 100 rows of D = 8 per message
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    row_ids = rng.permutation(9000)[:3000].astype(np.int64)
    labeled = row_ids[rng.choice(3000, 700, replace=False)]
    expect_ids, expect_scores = oracle(x, row_ids, labeled, 60)
    for n_shards, offer in [(3, None), (1, 5)]:
        shards = sharded(x, n_shards, row_ids, labeled)
        r = kcenter_greedy(shards, 60, backend="numpy", mode="sharded", offer_rows=offer)
        np.testing.assert_array_equal(r.row_ids_B, expect_ids)
        np.testing.assert_array_equal(r.scores_B, expect_scores)
        assert r.stats.pairs < 3000 * 760  # lazy: fewer than every row against every center


def test_lazy_updates_touch_few_rows_in_high_dimensions():
    """Noise-dominated embeddings: most rows are covered by the first centers and never
    compared again. (Low-dimensional clustered data gains little: rows stay far longer.)"""
    x = np.random.default_rng(4).standard_normal((20_000, 64)).astype(np.float32)
    r = kcenter_greedy(sharded(x, 2), 200, backend="numpy", mode="sharded")
    np.testing.assert_array_equal(r.row_ids_B, oracle(x, np.arange(20_000), [], 200)[0])
    assert r.stats.pairs < 0.3 * 20_000 * 200, r.stats.pairs
    low = kcenter_greedy(sharded(_blobs(20_000, 16), 2), 200, backend="numpy", mode="sharded")
    assert low.stats.pairs <= 1.1 * 20_000 * 200  # never much more than the eager update


# -- class quotas (kcenter.select_with_quotas; moved from test_coldstart.py) ------------------

def kcenter_quota_reference(ids, emb, cls, labeled, budget, lo, hi):
    """The constrained greedy, step by step: the farthest allowed row from every center."""
    lab = np.isin(ids, labeled)
    mind = np.full(ids.size, np.inf)
    for i in np.flatnonzero(lab):
        mind = np.minimum(mind, sq_dist_rows(emb, emb[i]))
    avail = np.bincount(cls[~lab], minlength=lo.size)
    lo = np.minimum(lo, avail)
    counts = np.zeros(lo.size, int)
    taken = lab.copy()
    picks = []
    for _ in range(budget):
        need = np.maximum(lo - counts, 0)
        slots = budget - len(picks)
        ok = ~taken & (counts[cls] < hi[cls])
        if slots <= need.sum():
            ok &= need[cls] > 0
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            break
        best = cand[np.lexsort((ids[cand], -mind[cand]))[0]]
        picks.append(int(ids[best]))
        taken[best] = True
        counts[cls[best]] += 1
        mind = np.minimum(mind, sq_dist_rows(emb, emb[best]))
    return picks


@pytest.mark.parametrize("quotas", [{"max": 2}, {"min": {1: 6}, "max": {0: 1}}, {"min": 3, "max": 6}])
def test_kcenter_quotas_are_the_constrained_greedy(data, quotas):
    from alscale.strategies.quotas import _bounds, predicted_class, select_with_quotas

    ids, emb, lp = data
    labeled = ids[::50]
    budget = 20
    cls = predicted_class(lp)
    lo = _bounds(quotas.get("min"), 5, "min")
    hi = _bounds(quotas.get("max"), 5, "max")
    want = kcenter_quota_reference(ids, emb, cls, labeled, budget, lo, hi)
    for n_shards in (1, 3):
        shards, _ = make_shards(ids, emb, lp, n_shards=n_shards, labeled=labeled)
        res = select_with_quotas(shards, "kcenter", budget, quotas)
        assert res.selection.indices_B.tolist() == want, n_shards
    counts = np.bincount(cls[np.isin(ids, want)], minlength=5)
    assert (counts <= hi).all() and (counts >= np.minimum(lo, 10**9)).all()


def test_kcenter_quotas_in_a_job(data, tmp_path):
    from alscale.jobspec import validate_job
    from alscale.pool import pool_table, write_table
    from alscale.runtime.coordinator import run_job

    ids, emb, lp = data
    pool = tmp_path / "pool.arrow"
    write_table(pool_table(ids, log_probs_N_K_C=lp, embeddings_N_D=emb), str(pool))
    job = validate_job({"pool": {"path": str(pool)}, "strategy": {"name": "kcenter", "budget": 15,
                                                                 "quotas": {"max": 3}},
                        "runtime": {"executor": "local", "shards": 2}})
    res = run_job(job, out_dir=tmp_path / "out", progress=False)
    assert len(res.selection) == 15 and max(res.manifest["quotas"]["picks_per_class"]) == 3
