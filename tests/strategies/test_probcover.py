"""ProbCover (probcover.py) against the reference code, the random fill, the edge cap, local and Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alscale.errors import AlscaleError
from alscale.index.exact import sq_dist_rows
from alscale.strategies import run_strategy
from tests.strategies.pools import assert_ray_equals_local, labels_of, make_shards


def probcover_reference(ids, x, labeled, delta, budget):
    """The reference code: directed edges within δ (self included), cover, greedy by degree."""
    d2 = np.stack([sq_dist_rows(x, x[j]) for j in range(x.shape[0])], axis=1)
    src, dst = np.nonzero(d2 < delta ** 2)
    order = np.argsort(ids)  # ties to the lower row_id: work in row_id order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    src, dst = rank[src], rank[dst]
    lab = rank[np.flatnonzero(np.isin(ids, labeled))]
    covered = np.unique(dst[np.isin(src, lab)])
    keep = ~np.isin(dst, covered)
    src, dst = src[keep], dst[keep]
    picks = []
    for _ in range(budget):
        deg = np.bincount(src, minlength=ids.size)
        cur = int(deg.argmax())
        if deg[cur] == 0:
            break
        new = dst[src == cur]
        keep = ~np.isin(dst, new)
        src, dst = src[keep], dst[keep]
        picks.append(int(ids[order[cur]]))
    return picks


def _normed(emb):
    x = emb.astype(np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("delta", [0.15, "auto"])
def test_probcover_matches_the_reference_and_every_sharding(data, delta):
    ids, emb, _ = data
    labeled = ids[::100][:5]
    budget = 12
    sels, states_1 = [], None
    for n_shards in (1, 3):
        shards, states = make_shards(ids, emb, n_shards=n_shards, labeled=labeled)
        opts = {"delta": delta, "n_classes": 8, "chunk_rows": 128}
        sels.append(run_strategy(shards, "probcover", budget, options=opts, seed=1))
        states_1 = states_1 or states
    np.testing.assert_array_equal(sels[1].indices_B, sels[0].indices_B)
    x = _normed(emb)
    if delta == "auto":
        # The purity rule on the k-means pseudo-labels: the (ceil(0.95 N))-th largest
        # distance to the nearest row of another label.
        lab_map = labels_of(states_1)
        lab = np.array([lab_map[int(r)] for r in ids])
        d2 = np.stack([sq_dist_rows(x, x[j]) for j in range(x.shape[0])], axis=1)
        d2[lab[:, None] == lab[None, :]] = np.inf
        r = np.sort(np.sqrt(d2.min(axis=1)))[::-1]
        delta = float(r[math.ceil(0.95 * r.size) - 1])
        pure = np.mean(np.sqrt(d2.min(axis=1)) >= delta)
        assert pure >= 0.95
    ref = probcover_reference(ids, x, labeled, delta, budget)
    assert sels[0].indices_B.tolist()[: len(ref)] == ref
    assert (sels[0].scores_B[:-1] >= sels[0].scores_B[1:]).all()  # coverage gains never grow


def test_probcover_fills_with_random_rows_when_nothing_is_left_to_cover(data):
    ids, emb, _ = data
    shards, _ = make_shards(ids[:50], emb[:50], n_shards=2)
    sel = run_strategy(shards, "probcover", 30, options={"delta": 10.0}, seed=3)  # one ball covers all
    assert sel.scores_B[0] == 50 and (sel.scores_B[1:] == 0).all()
    assert np.unique(sel.indices_B).size == 30


def test_probcover_edge_cap_is_a_clear_error(data):
    ids, emb, _ = data
    shards, _ = make_shards(ids, emb)
    with pytest.raises(AlscaleError, match=r"probcover: δ = 2 gives more than 1,000 edges .* smaller"):
        run_strategy(shards, "probcover", 5, options={"delta": 2.0, "max_edges": 1000})


def test_probcover_on_ray_equals_local(data, tmp_path, ray_session):
    assert_ray_equals_local(data, tmp_path, "probcover", {"delta": 0.3})
