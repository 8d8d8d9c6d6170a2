"""Cold start and huge batches (issue 9): k-means, TypiClust, ProbCover, Cluster-Margin, EGL.

Each strategy against a brute-force implementation of its paper's definition on small data,
and the same selection for every shard count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alscale.errors import AlscaleError
from alscale.index.exact import sq_dist_rows
from alscale.strategies import FanoutShards, InProcessFanout, ShardState, registry, run_strategy
from alscale.strategies import clustering
from alscale.strategies.clustering import canonical_argmin, kmeans
from alscale.strategies.egl import egl_scores
from tests.conftest import log_softmax


def blobs(n: int, d: int, k: int, seed: int = 0, spread: float = 4.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * spread
    return (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def make_shards(ids, emb, lp=None, n_shards=1, labeled=()):
    bounds = np.linspace(0, ids.shape[0], n_shards + 1).astype(int)
    states = [ShardState(ids[a:b], None if lp is None else lp[a:b], emb[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    shards = FanoutShards(InProcessFanout(states))
    shards.exclude(np.asarray(labeled, np.int64))
    return shards, states


def labels_of(states) -> dict[int, int]:
    return {int(r): int(c) for s in states for r, c in zip(s.row_ids_N, clustering.labels(s))}


@pytest.fixture(scope="module")
def data():
    n = 900
    emb = blobs(n, 6, 8, seed=1)
    lp = log_softmax(np.random.default_rng(2).normal(size=(n, 1, 5)) * 2)
    ids = np.random.default_rng(3).permutation(10 * n)[:n].astype(np.int64)
    return ids, emb, lp


# -- k-means --------------------------------------------------------------------------------

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


# -- TypiClust ------------------------------------------------------------------------------

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


# -- ProbCover ------------------------------------------------------------------------------

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


# -- Cluster-Margin -------------------------------------------------------------------------

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


# -- EGL --------------------------------------------------------------------------------------

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


@pytest.mark.parametrize("name, options, message", [
    ("typiclust", {"knn": 0}, "option knn must be an integer >= 1"),
    ("probcover", {"delta": -1}, "option delta of strategy probcover must be a positive number or 'auto'"),
    ("probcover", {"purity": 1.5}, "option purity of strategy probcover must be in (0, 1]"),
    ("cluster_margin", {"margin_ratio": 0.5}, "margin_ratio of strategy cluster_margin must be a number >= 1"),
    ("egl", {"bias": "yes"}, "option bias of strategy egl must be true or false"),
])
def test_bad_options_are_clear(name, options, message):
    with pytest.raises(AlscaleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        registry.check_options(name, options)


# -- SEALS ------------------------------------------------------------------------------------

def seals_reference(ids, emb, labeled, k):
    lab = np.flatnonzero(np.isin(ids, labeled))
    free = np.flatnonzero(~np.isin(ids, labeled))
    out = set()
    for i in lab:
        d = sq_dist_rows(emb[free], emb[i])
        o = np.lexsort((ids[free], d))[:k]
        out.update(ids[free][o].tolist())
    return np.array(sorted(out), dtype=np.int64)


@pytest.mark.parametrize("strategy", ["entropy", "kcenter", "badge"])
def test_seals_restricts_any_strategy_to_the_labelled_rows_neighbours(data, strategy):
    from alscale.strategies.seals import apply_seals, seals_candidates

    ids, emb, lp = data
    labeled = ids[::90][:10]
    ref = seals_reference(ids, emb, labeled, 15)
    sels = []
    for n_shards in (1, 3):
        shards, _ = make_shards(ids, emb, lp, n_shards=n_shards, labeled=labeled)
        np.testing.assert_array_equal(seals_candidates(shards, 15), ref)
        assert apply_seals(shards, 15) == ref.size == shards.n_candidates()
        sels.append(run_strategy(shards, strategy, 20, seed=4))
    np.testing.assert_array_equal(sels[1].indices_B, sels[0].indices_B)
    assert np.isin(sels[0].indices_B, ref).all()
    # The same strategy on a pool holding only the candidates and the labelled rows picks the same
    # rows (labelled rows keep their role, e.g. as k-center centers).
    keep = np.isin(ids, np.concatenate([ref, labeled]))
    shards, _ = make_shards(ids[keep], emb[keep], lp[keep], labeled=labeled)
    np.testing.assert_array_equal(run_strategy(shards, strategy, 20, seed=4).indices_B, sels[0].indices_B)


def test_seals_in_a_job_and_the_api(data, tmp_path):
    import alscale
    from alscale.jobspec import validate_job
    from alscale.pool import pool_table, write_table
    from alscale.runtime.coordinator import run_job

    ids, emb, lp = data
    labeled = ids[::90][:10]
    pool = tmp_path / "pool.arrow"
    write_table(pool_table(ids, log_probs_N_K_C=lp, embeddings_N_D=emb), str(pool))
    lab_file = tmp_path / "labeled.csv"
    lab_file.write_text("row_id\n" + "\n".join(map(str, labeled)) + "\n")
    job = validate_job({"pool": {"path": str(pool)}, "labeled": {"path": str(lab_file)},
                        "strategy": {"name": "entropy", "budget": 20, "seals": 15},
                        "runtime": {"executor": "local", "shards": 2}})
    res = run_job(job, out_dir=tmp_path / "out", progress=False)
    ref = seals_reference(ids, emb, labeled, 15)
    assert res.manifest["candidates"] == {"filter": "seals", "k": 15, "rows": ref.size}
    pos = np.flatnonzero(np.isin(ids, labeled))
    api = alscale.select("entropy", budget=20, log_probs=lp, embeddings=emb, labeled=pos, seals=15)
    assert ids[api.indices].tolist() == res.selection.indices_B.tolist()


# -- class quotas --------------------------------------------------------------------------------

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


def test_selection_loops_report_their_progress(data):
    from alscale.strategies.progress import reporting

    ids, emb, lp = data
    for name in ("kcenter", "badge", "typiclust", "probcover"):
        shards, _ = make_shards(ids, emb, lp, n_shards=2)
        seen: list[int] = []
        with reporting(seen.append):
            sel = run_strategy(shards, name, 15, options={"delta": 0.3} if name == "probcover" else None)
        assert sum(seen) == len(sel) == 15, name


# -- ALFA-Mix -------------------------------------------------------------------------------------

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


@pytest.mark.parametrize("quotas", [{"max": 3}, {"min": {2: 5}, "max": {0: 0}}])
def test_badge_quotas_sample_only_allowed_rows_the_same_for_every_sharding(data, quotas):
    from alscale.strategies.quotas import predicted_class, select_with_quotas

    ids, emb, lp = data
    lp1 = lp  # K = 1 log-probs, as BADGE uses
    cls = dict(zip(ids.tolist(), predicted_class(lp1).tolist()))
    sels = []
    for n_shards in (1, 3):
        shards, _ = make_shards(ids, emb, lp1, n_shards=n_shards, labeled=ids[:20])
        sels.append(select_with_quotas(shards, "badge", 18, quotas, seed=4))
    assert sels[0].selection.indices_B.tolist() == sels[1].selection.indices_B.tolist()
    counts = np.bincount([cls[r] for r in sels[0].selection.indices_B.tolist()], minlength=5)
    assert counts.tolist() == sels[0].counts
    assert counts.sum() == (15 if quotas == {"max": 3} else 18)  # 5 classes x max 3: the quotas fill first
    assert (counts <= quotas.get("max", 10**9) if isinstance(quotas.get("max"), int) else counts[0] == 0).all()
    if "min" in quotas:
        assert counts[2] >= min(5, sum(1 for r in ids[20:].tolist() if cls[r] == 2))


def test_badge_quotas_that_never_bind_give_plain_badge(data):
    from alscale.strategies.quotas import select_with_quotas

    ids, emb, lp = data
    shards, _ = make_shards(ids, emb, lp, n_shards=2, labeled=ids[:20])
    plain = run_strategy(shards, "badge", 15, seed=9)
    shards, _ = make_shards(ids, emb, lp, n_shards=2, labeled=ids[:20])
    quota = select_with_quotas(shards, "badge", 15, {"max": 100}, seed=9)
    assert quota.selection.indices_B.tolist() == plain.indices_B.tolist()


@pytest.mark.parametrize("name, options", [
    ("typiclust", {}), ("probcover", {"delta": 0.3}), ("cluster_margin", {"n_clusters": 6}), ("egl", {}),
])
def test_new_strategies_on_ray_equal_local(data, tmp_path, ray_session, name, options):
    from alscale.jobspec import validate_job
    from alscale.pool import pool_table, write_table
    from alscale.runtime.coordinator import run_job

    ids, emb, lp = data
    pool = tmp_path / "pool.arrow"
    write_table(pool_table(ids, log_probs_N_K_C=lp, embeddings_N_D=emb), str(pool))
    out = {}
    for executor in ("local", "ray"):
        job = validate_job({"pool": {"path": str(pool)},
                            "strategy": {"name": name, "budget": 12, "options": options, "quotas": None},
                            "runtime": {"executor": executor, "shards": 2}, "seed": 3})
        out[executor] = run_job(job, out_dir=tmp_path / executor, progress=False).selection
    assert out["ray"].indices_B.tolist() == out["local"].indices_B.tolist()
    np.testing.assert_array_equal(out["ray"].scores_B, out["local"].scores_B)


def test_kmeans_bounds_skip_rows_without_changing_any_assignment(data, monkeypatch):
    """Hamerly's bounds (the rows whose cluster cannot change are skipped) give exactly the
    labels, centers and iteration count of assigning every row at every iteration."""
    ids, emb, _ = data
    runs = []
    for bounded in (True, False):
        if not bounded:
            monkeypatch.setattr(clustering, "_stale_rows", lambda km, c: np.arange(km.x_N_D.shape[0]))
        shards, states = make_shards(ids, emb, n_shards=3)
        km = kmeans(shards, 12, seed=5, round=0, tol=0.0)
        runs.append((km, labels_of(states)))
    (a, la), (b, lb) = runs
    np.testing.assert_array_equal(a["centers"], b["centers"])
    assert la == lb and a["iters"] == b["iters"] and a["iters"] > 2


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
