"""ALFA-Mix (alfamix.py): the mixing flags against autograd, every sharding, a job with a head and labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alscale.errors import AlscaleError
from alscale.index.exact import sq_dist_rows
from alscale.strategies import run_strategy
from tests.strategies.pools import blobs, make_shards


def test_alfamix_flags_follow_the_closed_form_with_autograd_gradients():
    from alscale.strategies.alfamix import mix_flags

    torch.manual_seed(0)
    n, e, c, eps = 200, 6, 4, 0.2
    head = torch.nn.Linear(e, c).double()
    z = torch.randn(n, e, dtype=torch.float64)
    anchors = torch.randn(c, e, dtype=torch.float64)
    want = np.zeros(n, dtype=bool)
    for i in range(n):
        zi = z[i:i + 1].clone().requires_grad_(True)
        logits = head(zi)
        pred = int(logits.argmax())
        torch.nn.functional.cross_entropy(logits, torch.tensor([pred])).backward()
        g = zi.grad[0]
        for a in anchors:
            d = a - z[i]
            alpha = (eps * d.norm() / g.norm() * g / (d + 1e-8)).clamp(0, eps)
            mixed = alpha * a + (1 - alpha) * z[i]
            want[i] |= int(head(mixed[None]).argmax()) != pred
    got = mix_flags(z.numpy(), anchors.numpy(), head.weight.detach().numpy(), head.bias.detach().numpy(), eps)
    assert got.tolist() == want.tolist() and 0 < want.sum() < n


@pytest.mark.parametrize("eps", [0.05, 0.5])  # few candidates (random fill) / many (k-means)
def test_alfamix_is_the_same_for_every_sharding(data, eps):
    from alscale.strategies.alfamix import mix_flags

    ids, emb, lp = data
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(5, 6)), rng.normal(size=5)
    labeled = ids[:60]
    labels = (labeled, rng.integers(0, 5, 60))
    sels = []
    for n_shards in (1, 3):
        shards, _ = make_shards(ids, emb, lp, n_shards=n_shards, labeled=labeled)
        sels.append(run_strategy(shards, "alfamix", 30, options={"eps": eps, "head": (w, b), "labels": labels},
                                 seed=2))
    np.testing.assert_array_equal(sels[1].indices_B, sels[0].indices_B)
    sel = sels[0]
    assert len(sel) == 30 and np.unique(sel.indices_B).size == 30 and not np.isin(sel.indices_B, labeled).any()
    emb_lab = emb[np.isin(ids, labeled)].astype(np.float64)
    order = np.argsort(ids[np.isin(ids, labeled)])
    y = labels[1][np.argsort(labeled)]
    anchors = np.stack([emb_lab[order][y == k].mean(0) for k in np.unique(y)])
    free = ~np.isin(ids, labeled)
    cand = set(ids[free][mix_flags(emb[free], anchors, w, b, eps)].tolist())
    n_from_cand = sum(int(r) in cand for r in sel.indices_B)
    assert n_from_cand == min(30, len(cand))  # candidates first; the rest random


def test_alfamix_in_a_job_takes_the_model_head_and_the_ledger_labels(tmp_path):
    from alscale.jobspec import validate_job
    from alscale.loop.ledger import Ledger
    from alscale.pool import mnist_pool
    from alscale.runtime.coordinator import run_job

    pool = tmp_path / "m.arrow"
    mnist_pool(str(pool), rows=600)
    led = tmp_path / "ledger"
    from alscale.pool import read_shard
    from alscale.types import ShardSpec

    d = read_shard(ShardSpec(str(pool), 0, 0, 600), ["label"])
    Ledger(led).append(d.row_ids_N[:40], d.labels_N[:40], 0, "people")
    job = {"pool": {"path": str(pool)}, "labeled": {"path": str(led)},
           "model": {"factory": "mlp", "kwargs": {"num_classes": 10, "hidden": 32}},
           "strategy": {"name": "alfamix", "budget": 12}, "runtime": {"executor": "local", "shards": 2}}
    res = run_job(validate_job(job), out_dir=tmp_path / "out", progress=False)
    assert len(res.selection) == 12 and not np.isin(res.selection.indices_B, d.row_ids_N[:40]).any()
    assert "head" not in res.manifest["job"]["strategy"]["options"] or \
        res.manifest["job"]["strategy"]["options"]["head"] is None
    bad = dict(job, model={"factory": "linear", "kwargs": {"num_classes": 10}})
    with pytest.raises(AlscaleError, match="needs the model's last linear layer as an attribute 'head'"):
        run_job(validate_job(bad), out_dir=tmp_path / "o2", progress=False)


def test_alfamix_nearest_candidate_per_centroid_equals_a_full_pass_per_centroid():
    from alscale.strategies.alfamix import nearest_per_centroid

    rng = np.random.default_rng(7)
    x = blobs(3000, 5, 6, seed=8)
    x[10] = x[20]  # a tie: the lower id first
    ids = np.sort(rng.permutation(10 ** 6)[:3000]).astype(np.int64)
    # centroids on rows, three on the tied pair, 30 on one point (their few neighbours get
    # taken, so the later ones search again)
    centers = np.concatenate([x[rng.choice(3000, 300)] + 0.01, x[[10, 10, 10]], np.repeat(x[[5]], 30, 0)]
                             ).astype(np.float32)
    got_i, got_d = nearest_per_centroid(x, ids, centers)
    taken = np.zeros(3000, dtype=bool)
    for j in range(centers.shape[0]):  # the reference: a full canonical pass per centroid
        d = sq_dist_rows(x, centers[j])
        d[taken] = np.inf
        best = int(np.lexsort((ids, d))[0])
        taken[best] = True
        assert got_i[j] == ids[best] and got_d[j] == d[best]
