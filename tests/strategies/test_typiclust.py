"""TypiClust (typiclust.py) against the reference code's loop, every sharding, local and Ray."""

from __future__ import annotations

import numpy as np
import pytest

from alscale.strategies import run_strategy
from tests.strategies.pools import assert_ray_equals_local, labels_of, make_shards


def typiclust_reference(ids, emb, labeled, labels, budget, knn=20, min_size=5):
    """The reference code's loop over whole arrays (clusters given)."""
    k = labels.max() + 1
    sizes = np.bincount(labels, minlength=k)
    is_lab = np.isin(ids, labeled)
    lab_counts = np.bincount(labels[is_lab], minlength=k)
    clusters = [c for c in range(k) if sizes[c] > min_size]
    clusters.sort(key=lambda c: (lab_counts[c], -sizes[c], c))
    avail = ~is_lab
    picks = []
    for i in range(budget):
        c = clusters[i % len(clusters)]
        idx = np.flatnonzero((labels == c) & avail)
        idx = idx[np.argsort(ids[idx])]
        x = emb[idx].astype(np.float64)
        kk = min(knn, len(idx) // 2)
        dist = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))
        np.fill_diagonal(dist, np.inf)
        mean = np.sort(dist, axis=1)[:, :kk].mean(1)
        typ = 1 / (mean + 1e-5)
        j = idx[int(np.argmax(typ))]
        picks.append(int(ids[j]))
        avail[j] = False
    return picks


@pytest.mark.parametrize("n_labeled", [0, 12])
def test_typiclust_matches_the_reference_and_every_sharding(data, n_labeled):
    ids, emb, _ = data
    labeled = ids[::75][:n_labeled]
    budget = 10
    sels = []
    for n_shards in (1, 2, 5):
        shards, states = make_shards(ids, emb, n_shards=n_shards, labeled=labeled)
        sels.append(run_strategy(shards, "typiclust", budget, seed=7))
    for s in sels[1:]:
        np.testing.assert_array_equal(s.indices_B, sels[0].indices_B)
        np.testing.assert_array_equal(s.scores_B, sels[0].scores_B)
    lab_map = labels_of(states)
    labels = np.array([lab_map[int(r)] for r in ids])
    assert labels.max() + 1 == n_labeled + budget
    assert sels[0].indices_B.tolist() == typiclust_reference(ids, emb, labeled, labels, budget)
    assert not np.isin(sels[0].indices_B, labeled).any()


def test_typiclust_on_ray_equals_local(data, tmp_path, ray_session):
    assert_ray_equals_local(data, tmp_path, "typiclust", {})
