"""EGL (egl.py): the closed form against autograd, the sharded top-k, local and Ray."""

from __future__ import annotations

import numpy as np
import torch

from alscale.strategies import run_strategy
from alscale.strategies.egl import egl_scores
from tests.strategies.pools import assert_ray_equals_local, make_shards


def test_egl_is_the_expected_last_layer_gradient_norm_computed_by_autograd():
    torch.manual_seed(0)
    n, e, c = 30, 7, 4
    layer = torch.nn.Linear(e, c).double()
    h = torch.randn(n, e, dtype=torch.float64)
    lp = torch.log_softmax(layer(h), dim=1).detach()
    want = np.zeros(n)
    for i in range(n):
        p = lp[i].exp()
        for y in range(c):
            layer.zero_grad()
            loss = torch.nn.functional.cross_entropy(layer(h[i:i + 1]), torch.tensor([y]))
            loss.backward()
            g = torch.cat([layer.weight.grad.flatten(), layer.bias.grad])
            want[i] += float(p[y]) * float(g.norm())
    got = egl_scores(lp.numpy()[:, None, :].astype(np.float32), h.numpy().astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_egl_ranks_by_score_across_shards(data):
    ids, emb, lp = data
    ref = egl_scores(lp, emb)
    for n_shards in (1, 4):
        shards, _ = make_shards(ids, emb, lp, n_shards=n_shards)
        sel = run_strategy(shards, "egl", 25)
        order = np.lexsort((ids, -ref))[:25]
        assert sel.indices_B.tolist() == ids[order].tolist()


def test_egl_on_ray_equals_local(data, tmp_path, ray_session):
    assert_ray_equals_local(data, tmp_path, "egl", {})
