"""ProbCover on the neighbour layer: the exact δ-graph, δ and picks equal the all-pairs
construction for every sharding; the approximate mode says so in its name."""

from __future__ import annotations

import numpy as np
import pytest

from alscale.strategies import FanoutShards, InProcessFanout, ShardState, run_strategy
from alscale.strategies import probcover as pc
from alscale.strategies import probcover_graph as pcg
from alscale.strategies.registry import check_options


def _pool(n=700, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((12, 16)) * 2.5
    x = (c[rng.integers(0, 12, n)] + rng.standard_normal((n, 16))).astype(np.float32)
    x[5] = x[9]  # a duplicate
    return np.arange(n, dtype=np.int64) * 3 + 1, x


def _shards(ids, x, n_shards, labeled=()):
    b = np.linspace(0, ids.shape[0], n_shards + 1).astype(int)
    sh = FanoutShards(InProcessFanout([ShardState(ids[b[s]:b[s + 1]], None, x[b[s]:b[s + 1]])
                                       for s in range(n_shards)]))
    sh.exclude(np.asarray(labeled, np.int64))
    return sh


def _old_graph(sh, delta):
    sizes = [int(v) for v in sh.call(pc._OP + "pc_size")]
    for ids, xc, _ in pc._chunks(sh, sizes, 300, True):
        sh.call(pc._OP + "pc_edges", ids, xc, delta ** 2, True)
    sh.call(pc._OP + "pc_finish")
    src, dst = [], []
    for w in sh.fanout.workers:
        g = w.strategy_state["probcover"].graph
        src.append(np.repeat(w.row_ids_N, np.diff(g.csr_ptr_N1)))
        dst.append(g.csr_dst_E)
    return np.concatenate(src), np.concatenate(dst)


def _edges(src, dst):
    o = np.lexsort((dst, src))
    return np.stack([src[o], dst[o]])


@pytest.mark.parametrize("n_shards", [1, 2, 7])
def test_exact_graph_and_delta_equal_the_all_pairs_construction(n_shards):
    ids, x = _pool()
    old_sh = _shards(ids, x, 2)
    opts = check_options("probcover", {"chunk_rows": 300})
    old_delta = pc.purity_delta(old_sh, n_classes=10, purity=0.95, normalize=True, chunk_rows=300, seed=0,
                                round=0, kmeans_iters=100)
    sh = _shards(ids, x, n_shards)
    sh.call(pcg._OP + "pcg_index", "exact", {}, True, 0)
    delta = pcg.purity_delta(sh, n_classes=10, purity=0.95, normalize=True, chunk_rows=300, seed=0, round=0,
                             kmeans_iters=100)
    assert delta == old_delta
    for d in (delta, delta * 3):
        pcg.build_graph(sh, d, mode="exact", params={}, normalize=True, chunk_rows=300,
                        max_edges=opts["max_edges"], seed=0)
        new = [np.concatenate(p) for p in zip(*sh.call(pcg._OP + "pcg_graph"))]
        ref = _old_graph(_shards(ids, x, 2), d)
        np.testing.assert_array_equal(_edges(*new), _edges(*ref))


@pytest.mark.parametrize("options", [{}, {"delta": 0.35}])
def test_exact_picks_equal_all_pairs_for_1_2_7_shards(options):
    ids, x = _pool(600, seed=1)
    labeled = ids[::53]
    ref = pc.select_probcover_allpairs(_shards(ids, x, 2, labeled), 25, options=check_options("probcover", options),
                                       seed=4)
    for n_shards in (1, 2, 7):
        sel = run_strategy(_shards(ids, x, n_shards, labeled), "probcover", 25, options={**options, "offer": 3},
                           seed=4)
        assert sel.strategy == "probcover"
        np.testing.assert_array_equal(sel.indices, ref.indices)
        np.testing.assert_array_equal(sel.scores, ref.scores)


def test_approximate_probcover_is_named_and_covers_nearly_as_much():
    pytest.importorskip("faiss")
    ids, x = _pool(1200, seed=2)
    exact = run_strategy(_shards(ids, x, 2), "probcover", 30, options={"delta": 0.4}, seed=0)
    approx = run_strategy(_shards(ids, x, 2), "probcover_approx", 30,
                          options={"delta": 0.4, "index_params": {"nlist": 16, "nprobe": 4}}, seed=0)
    assert approx.strategy == "probcover_approx" and exact.strategy == "probcover"
    assert len(set(approx.indices.tolist())) == 30
    assert _coverage(x, approx) >= 0.9 * _coverage(x, exact)


def _coverage(x, sel):
    """The fraction of the pool within δ = 0.4 of a pick (normalised rows; ids 3·pos + 1)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pos = (sel.indices - 1) // 3
    d = ((xn[:, None, :] - xn[None, pos, :]) ** 2).sum(-1)
    return np.mean((d < 0.16).any(axis=1))


def test_approximate_probcover_on_ivf_hnsw_lists_covers_nearly_as_much():
    """probcover_approx's default δ-graph index: IVF with about 128 rows per list over an
    HNSW quantizer (``GRAPH_IVF``); given ``nlist`` the flat quantizer stays. On a small
    pool 32 rows per list make many lists; the default runs too."""
    pytest.importorskip("faiss")
    from alscale.strategies.probcover_graph import GRAPH_IVF, graph_params

    assert graph_params("approx_ivf_flat", None) == GRAPH_IVF
    assert graph_params("approx_ivf_flat", {"nprobe": 16}) == {**GRAPH_IVF, "nprobe": 16}
    assert graph_params("approx_ivf_flat", {"nlist": 16}) == {"nlist": 16}
    assert graph_params("exact", None) == {}
    ids, x = _pool(3000, seed=4)
    exact = run_strategy(_shards(ids, x, 2), "probcover", 30, options={"delta": 0.4}, seed=0)
    lists = {"delta": 0.4, "index_params": {"list_rows": 32}}
    approx = run_strategy(_shards(ids, x, 2), "probcover_approx", 30, options=lists, seed=0)
    again = run_strategy(_shards(ids, x, 2), "probcover_approx", 30, options=lists, seed=0)
    np.testing.assert_array_equal(approx.indices, again.indices)
    assert _coverage(x, approx) >= 0.95 * _coverage(x, exact)
    default = run_strategy(_shards(ids, x, 2), "probcover_approx", 30, options={"delta": 0.4}, seed=0)
    assert len(set(default.indices.tolist())) == 30
    assert _coverage(x, default) >= 0.95 * _coverage(x, exact)


def test_sampled_purity_rule_is_named_approximate():
    ids, x = _pool(800)
    sel = run_strategy(_shards(ids, x, 2), "probcover", 10, options={"purity_sample": 500}, seed=0)
    assert sel.strategy == "probcover_approx"
