"""Cluster-Margin (cluster_margin.py) against its definition, huge batches, local and Ray."""

from __future__ import annotations

import numpy as np

from alscale.strategies import run_strategy
from tests.strategies.pools import assert_ray_equals_local, labels_of, make_shards


def test_cluster_margin_matches_the_reference_and_every_sharding(data):
    from alscale.strategies import noise, scores

    ids, emb, lp = data
    labeled = ids[:30]
    budget = 40
    sels = []
    for n_shards in (1, 4):
        shards, states = make_shards(ids, emb, lp, n_shards=n_shards, labeled=labeled)
        opts = {"n_clusters": 6, "margin_ratio": 3}
        sels.append(run_strategy(shards, "cluster_margin", budget, options=opts, seed=2))
        if n_shards == 1:
            lab_map = labels_of(states)
    np.testing.assert_array_equal(sels[1].indices_B, sels[0].indices_B)
    # Reference: 120 lowest-margin unlabelled rows; clusters by count ascending; round-robin;
    # random order inside a cluster.
    free = ~np.isin(ids, labeled)
    m = scores.margin(lp)
    cand = np.flatnonzero(free)
    cand = cand[np.lexsort((ids[cand], -m[cand]))][:120]
    groups: dict[int, list[int]] = {}
    u = noise.keyed_uniform(2, 0, ids[cand])
    for j in np.lexsort((ids[cand], -u)):
        groups.setdefault(lab_map[int(ids[cand[j]])], []).append(int(ids[cand[j]]))
    visit = sorted(groups, key=lambda c: (len(groups[c]), c))
    picks: list[int] = []
    while len(picks) < budget:
        for c in visit:
            if groups[c] and len(picks) < budget:
                picks.append(groups[c].pop(0))
    assert sels[0].indices_B.tolist() == picks


def test_cluster_margin_selects_huge_batches(data):
    ids, emb, lp = data
    shards, _ = make_shards(ids, emb, lp, n_shards=3)
    sel = run_strategy(shards, "cluster_margin", 850, options={"n_clusters": 10}, seed=0)
    assert len(sel) == 850 and np.unique(sel.indices_B).size == 850


def test_cluster_margin_on_ray_equals_local(data, tmp_path, ray_session):
    assert_ray_equals_local(data, tmp_path, "cluster_margin", {"n_clusters": 6})
