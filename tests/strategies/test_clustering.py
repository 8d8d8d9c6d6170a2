"""k-means over shards (clustering.py): the canonical argmin and Lloyd's fixed point, every sharding."""

from __future__ import annotations

import numpy as np

from alscale.index.exact import sq_dist_rows
from alscale.strategies import clustering
from alscale.strategies.clustering import canonical_argmin, kmeans
from tests.strategies.pools import labels_of, make_shards


def test_canonical_argmin_is_the_float64_argmin_with_ties_to_the_lower_center():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 7)).astype(np.float32)
    c = rng.normal(size=(40, 7)).astype(np.float32)
    c[13] = c[5]  # a tie: the lower index wins
    x[:3] = c[5]
    got, got_d = canonical_argmin(x, c)
    full = np.stack([sq_dist_rows(x, c[j]) for j in range(c.shape[0])], axis=1)
    np.testing.assert_array_equal(got, np.argmin(full, axis=1))
    np.testing.assert_array_equal(got_d, full.min(axis=1))
    assert (got[:3] == 5).all()
    a, _ = canonical_argmin(x[:123], c)
    np.testing.assert_array_equal(a, got[:123])


def test_kmeans_is_the_same_for_every_sharding_and_matches_plain_lloyd(data):
    ids, emb, _ = data
    results = []
    for n_shards in (1, 3, 7):
        shards, states = make_shards(ids, emb, n_shards=n_shards)
        km = kmeans(shards, 8, seed=4, round=0, tol=0.0)  # to the fixed point
        results.append((km["centers"], labels_of(states)))
    for centers, labels in results[1:]:
        np.testing.assert_array_equal(centers, results[0][0])
        assert labels == results[0][1]
    # Plain Lloyd's from the converged centers changes nothing (a fixed point), and every
    # row is with its nearest center.
    centers, labels = results[0]
    lab = np.array([labels[int(r)] for r in ids])
    d = ((emb[:, None, :].astype(np.float64) - centers[None].astype(np.float32).astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(lab, np.argmin(d, axis=1))
    means = np.stack([emb[lab == j].astype(np.float64).mean(0) for j in range(8)])
    np.testing.assert_allclose(means, centers, rtol=0, atol=1e-12)


def test_kmeans_bounds_skip_rows_without_changing_any_assignment(data, monkeypatch):
    """Hamerly's bounds (the rows whose cluster cannot change are skipped) and the per-cluster
    sums updated by the rows that move give exactly the labels, centers and iteration count
    of assigning every row and summing every cluster afresh at every iteration."""
    ids, emb, _ = data
    runs = []
    for bounded in (True, False):
        if not bounded:  # forget the last centers: every iteration is a first, full pass
            first_use = clustering._km
            monkeypatch.setattr(clustering, "_km", lambda st, first_use=first_use: _forget(first_use(st)))
        shards, states = make_shards(ids, emb, n_shards=3)
        km = kmeans(shards, 12, seed=5, round=0, tol=0.0)
        runs.append((km, labels_of(states)))
    (a, la), (b, lb) = runs
    np.testing.assert_array_equal(a["centers"], b["centers"])
    assert la == lb and a["iters"] == b["iters"] and a["iters"] > 2


def _forget(km):
    km.centers_K_D = None
    return km
