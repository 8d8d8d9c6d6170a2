"""Class quotas (quotas.py): the constrained greedy against brute force, every sharding; errors; a job."""

from __future__ import annotations

import numpy as np
import pytest

from alscale.errors import AlscaleError
from tests.strategies.pools import make_shards


def quota_reference(keys, ids, cls, budget, lo, hi):
    """Step by step: the best allowed row (brute force over every candidate)."""
    c = lo.shape[0]
    counts = np.zeros(c, int)
    taken = np.zeros(ids.shape[0], bool)
    avail = np.bincount(cls, minlength=c)
    picks = []
    for _ in range(budget):
        owed = sum(max(0, min(lo[j], avail[j]) - counts[j]) for j in range(c))
        slots = budget - len(picks)
        ok = ~taken & (counts[cls] < hi[cls])
        if slots <= owed:
            ok &= counts[cls] < np.minimum(lo, avail)[cls]
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            break
        best = cand[np.lexsort((ids[cand], -keys[cand]))[0]]
        picks.append(int(ids[best]))
        taken[best] = True
        counts[cls[best]] += 1
    return picks, counts


@pytest.mark.parametrize("quotas", [
    {"max": 3},
    {"min": 4},
    {"min": {0: 10, 3: 2}, "max": {1: 0}},
    {"min": {2: 20}},  # more than class 2 has: all of it, the rest elsewhere
])
def test_class_quotas_are_the_constrained_greedy(data, quotas):
    from alscale.strategies import scores
    from alscale.strategies.quotas import _bounds, predicted_class, select_with_quotas

    ids, emb, lp = data
    rng = np.random.default_rng(5)
    lp = lp.copy()
    lp[rng.random(lp.shape[0]) < 0.98, 0, 2] -= 30  # make class 2 rare
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    labeled = ids[:40]
    budget = 25
    cls = predicted_class(lp)
    keep = ~np.isin(ids, labeled)
    lo = _bounds(quotas.get("min"), 5, "min")
    hi = _bounds(quotas.get("max"), 5, "max")
    want, want_counts = quota_reference(scores.entropy(lp)[keep], ids[keep], cls[keep], budget, lo, hi)
    for n_shards in (1, 3):
        shards, _ = make_shards(ids, emb, lp, n_shards=n_shards, labeled=labeled)
        res = select_with_quotas(shards, "entropy", budget, quotas, page=2)
        assert res.selection.indices_B.tolist() == want
        assert res.counts == want_counts.tolist()
    if quotas == {"min": {2: 20}}:
        assert 0 < np.count_nonzero(cls[keep] == 2) < 20
        assert res.unmet == {2: 20 - int(np.count_nonzero(cls[keep] == 2))}


def test_quotas_errors_and_job(data, tmp_path):
    import alscale
    from alscale.jobspec import JobError, validate_job
    from alscale.pool import pool_table, write_table
    from alscale.runtime.coordinator import run_job

    ids, emb, lp = data
    with pytest.raises(AlscaleError, match="the minimums add up to 50, more than the budget 20"):
        alscale.select("entropy", budget=20, log_probs=lp, quotas={"min": 10})
    with pytest.raises(AlscaleError, match="class 7 is outside the model's 5 classes"):
        alscale.select("entropy", budget=20, log_probs=lp, quotas={"max": {7: 1}})
    with pytest.raises(JobError, match="strategy.quotas work with the score-based strategies, kcenter and badge, "
                                       "not typiclust"):
        validate_job({"pool": {"path": "p.arrow"}, "strategy": {"name": "typiclust", "budget": 5,
                                                                "quotas": {"max": 1}}})
    pool = tmp_path / "pool.arrow"
    write_table(pool_table(ids, log_probs_N_K_C=lp, embeddings_N_D=emb), str(pool))
    job = validate_job({"pool": {"path": str(pool)}, "strategy": {"name": "margin", "budget": 20,
                                                                 "quotas": {"max": 4}},
                        "runtime": {"executor": "local", "shards": 3}})
    res = run_job(job, out_dir=tmp_path / "out", progress=False)
    assert res.manifest["quotas"]["max"] == 4 and max(res.manifest["quotas"]["picks_per_class"]) == 4
    assert sum(res.manifest["quotas"]["picks_per_class"]) == 20
