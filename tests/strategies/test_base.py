"""BASE (Emam et al., arXiv 2111.12880) against a brute-force reference of the paper's definition,
for 1/2/7 shards, local and Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alscale import select
from alscale.errors import AlscaleError
from alscale.strategies import FanoutShards, InProcessFanout, ShardState, run_strategy
from alscale.strategies.base import boundary_distances
from tests.conftest import log_softmax


def reference_distances(log_probs, w=None):
    """d(x, c) row by row, class by class, straight from the definition."""
    n, _, c = log_probs.shape
    p = np.exp(log_probs.astype(np.float64)).mean(axis=1)
    lp64 = log_probs.astype(np.float64)
    m = np.logaddexp.reduce(lp64, axis=1) - np.log(lp64.shape[1]) if lp64.shape[1] > 1 else lp64[:, 0, :]
    out = np.empty((n, c))
    for i in range(n):
        y = int(np.argmax(p[i]))
        for j in range(c):
            if j != y:
                den = 1.0 if w is None else float(np.linalg.norm(w[y] - w[j]))
                out[i, j] = (m[i, y] - m[i, j]) / den if den > 0 else np.inf
        out[i, y] = min(out[i, j] for j in range(c) if j != y)
    return out


def reference_base(ids, d, labeled, budget, order="round_robin"):
    """The closest not-picked row of each class in turn (ties: lower row_id)."""
    c = d.shape[1]
    taken = np.isin(ids, labeled)
    budget = min(budget, int((~taken).sum()))
    picks = []

    def take(j):
        cand = np.flatnonzero(~taken)
        best = cand[np.lexsort((ids[cand], d[cand, j]))[0]]
        taken[best] = True
        picks.append(int(ids[best]))

    if order == "sequential":
        for j in range(c):
            for _ in range(budget // c + int(j < budget % c)):
                take(j)
    else:
        for t in range(budget):
            take(t % c)
    return picks


def shards_of(ids, lp, n_shards, labeled):
    bounds = np.linspace(0, ids.shape[0], n_shards + 1).astype(int)
    states = [ShardState(ids[a:b], lp[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    shards = FanoutShards(InProcessFanout(states))
    shards.exclude(np.asarray(labeled, np.int64))
    return shards


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    n, c = 400, 5
    lp = log_softmax(rng.normal(size=(n, 1, c)) * 2)
    lp[:, 0, 0] += 2.0  # class 0 predicted far more often: an imbalanced prediction
    lp = log_softmax(lp)
    lp[300:340] = lp[:40]  # duplicated rows: ties on the distance
    ids = rng.permutation(5 * n)[:n].astype(np.int64)
    w = rng.normal(size=(c, 6))
    return ids, lp, w


def test_feature_distance_is_the_papers_smallest_perturbation():
    """From log-probs and the head's weights = |(w_ŷ − w_c)ᵀh + b_ŷ − b_c| / ‖w_ŷ − w_c‖ on the embedding,
    and h + ε (the perturbation of that norm) sits on the boundary."""
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 4).double()
    h = torch.randn(50, 6, dtype=torch.float64)
    z = head(h).detach().numpy()
    lp = torch.log_softmax(torch.from_numpy(z), dim=1).numpy()[:, None, :]
    w, b = head.weight.detach().numpy(), head.bias.detach().numpy()
    got = boundary_distances(lp, np.array([[np.linalg.norm(w[i] - w[j]) for j in range(4)] for i in range(4)]))
    y = z.argmax(axis=1)
    for i in range(50):
        for c in range(4):
            if c == y[i]:
                continue
            dw, db = w[y[i]] - w[c], b[y[i]] - b[c]
            want = abs(dw @ h[i].numpy() + db) / np.linalg.norm(dw)
            assert got[i, c] == pytest.approx(want, rel=1e-9)
            eps = -(dw @ h[i].numpy() + db) / (dw @ dw) * dw
            z_adv = head(h[i] + torch.from_numpy(eps)).detach().numpy()
            assert z_adv[y[i]] == pytest.approx(z_adv[c], abs=1e-9)
        assert got[i, y[i]] == min(got[i, c] for c in range(4) if c != y[i])


@pytest.mark.parametrize("order", ["round_robin", "sequential"])
@pytest.mark.parametrize("use_head", [False, True])
def test_base_is_the_reference_for_every_sharding(data, order, use_head):
    ids, lp, w = data
    labeled = ids[::9]
    d = reference_distances(lp, w if use_head else None)
    np.testing.assert_allclose(boundary_distances(lp, None if not use_head else
                                                  np.linalg.norm(w[:, None] - w[None], axis=2)), d, rtol=1e-12)
    budget = 83  # not a multiple of C; far more than a page, so the streams refill and skip shared rows
    want = reference_base(ids, d, labeled, budget, order)
    opts = {"order": order, **({"head": (w, np.zeros(5))} if use_head else {})}
    for n_shards in (1, 2, 7):
        sel = run_strategy(shards_of(ids, lp, n_shards, labeled), "base_balanced", budget, options=opts)
        assert sel.indices_B.tolist() == want, n_shards
    pos = {int(r): i for i, r in enumerate(ids)}
    cls = [t % 5 for t in range(budget)] if order == "round_robin" else \
        [j for j in range(5) for _ in range(budget // 5 + int(j < budget % 5))]
    np.testing.assert_allclose(sel.scores_B, [-d[pos[r], j] for r, j in zip(want, cls)], rtol=1e-12)


def test_base_balances_what_the_model_predicts_unevenly(data):
    ids, lp, _ = data
    pred = np.exp(lp).mean(1).argmax(1)
    assert np.bincount(pred, minlength=5)[0] > 0.4 * ids.size  # the model over-predicts class 0
    sel = select("base_balanced", budget=50, log_probs=lp)
    d = boundary_distances(lp)
    # every class got exactly 10 picks: the picks of class c are its 10 closest rows not taken earlier
    assert len(set(sel.indices.tolist())) == 50
    own = np.array([d[r, t % 5] for t, r in enumerate(sel.indices.tolist())])
    np.testing.assert_allclose(-sel.scores_B, own)


def test_mc_samples_use_the_mean_probability():
    rng = np.random.default_rng(3)
    lp = log_softmax(rng.normal(size=(120, 4, 3)) * 2)
    lp[5, :, 1] = -np.inf  # a probability of exactly 0
    lp = log_softmax(np.where(np.isinf(lp), -1e30, lp)).astype(np.float32)
    ids = np.arange(120, dtype=np.int64)
    d = reference_distances(lp)
    np.testing.assert_allclose(boundary_distances(lp), d, rtol=1e-9)
    want = reference_base(ids, boundary_distances(lp), [], 30)
    for n_shards in (1, 7):
        assert run_strategy(shards_of(ids, lp, n_shards, []), "base_balanced", 30).indices_B.tolist() == want


def test_bad_options_and_inputs(data):
    ids, lp, w = data
    with pytest.raises(AlscaleError, match="option distance of strategy base_balanced must be one of auto, feature"):
        select("base_balanced", budget=5, log_probs=lp, distance="cosine")
    with pytest.raises(AlscaleError, match="option order of strategy base_balanced must be one of round_robin"):
        select("base_balanced", budget=5, log_probs=lp, order="random")
    with pytest.raises(AlscaleError, match="distance: feature needs the classifier head"):
        select("base_balanced", budget=5, log_probs=lp, distance="feature")
    with pytest.raises(AlscaleError, match="the head has 3 classes but the log-probs 5"):
        select("base_balanced", budget=5, log_probs=lp, head=(w[:3], np.zeros(3)))
    with pytest.raises(AlscaleError, match="at least 2 classes"):
        select("base_balanced", budget=5, log_probs=np.zeros((10, 1, 1)))
    # distance: logit ignores a head; the alias names the same strategy
    a = select("balanced_selection", budget=12, log_probs=lp, head=(w, np.zeros(5)), distance="logit")
    b = select("base_balanced", budget=12, log_probs=lp)
    assert a.indices.tolist() == b.indices.tolist()


def test_base_job_takes_the_models_head_and_ray_equals_local(tmp_path, ray_session):
    from alscale.jobspec import validate_job
    from alscale.pool import pool_table, write_table
    from alscale.runtime.coordinator import run_job
    from alscale.scoring import ModelSpec, Scorer

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    ids = np.arange(1000, 1300, dtype=np.int64)
    pool = tmp_path / "pool.arrow"
    write_table(pool_table(ids, features_N_D=x), str(pool))
    model = {"factory": "linear", "kwargs": {"num_classes": 4}, "device": "cpu"}
    out = {}
    for executor, shards in (("local", 1), ("local", 7), ("ray", 2)):
        job = validate_job({"pool": {"path": str(pool)}, "model": model,
                            "strategy": {"name": "base_balanced", "budget": 22},
                            "runtime": {"executor": executor, "shards": shards}, "seed": 3})
        out[executor, shards] = run_job(job, out_dir=tmp_path / f"{executor}{shards}", progress=False).selection
    ref = out["local", 1]
    for key, sel in out.items():
        assert sel.indices_B.tolist() == ref.indices_B.tolist(), key
        np.testing.assert_array_equal(sel.scores_B, ref.scores_B)
    # the same as the in-memory strategy on the model's log-probs with its head's weights
    scorer = Scorer(ModelSpec(factory="linear", kwargs={"num_classes": 4}, device="cpu"), in_features=8, seed=3)
    lp, _ = scorer.score(x)
    w = scorer.model.fc.weight.detach().double().numpy()
    mem = select("base_balanced", budget=22, log_probs=lp, head=(w, None))
    assert ids[mem.indices].tolist() == ref.indices_B.tolist()
    assert mem.indices.tolist() != select("base_balanced", budget=22, log_probs=lp).indices.tolist()
