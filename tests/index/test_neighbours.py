"""The neighbour layer: exact modes equal float64 brute force (ties to the lower id) for
every candidate backend and shard count; approximate modes are named and return true
distances; the GPU path runs where CUDA exists."""

from __future__ import annotations

import numpy as np
import pytest

from alscale.errors import AlscaleError
from alscale.index.neighbours import MODES, check_mode, is_exact, make_index, merge_knn
from alscale.strategies import FanoutShards, InProcessFanout, ShardState, neighbour_ops


def _data(n=1500, d=12, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((8, d)) * 3
    x = (c[rng.integers(0, 8, n)] + rng.standard_normal((n, d))).astype(np.float32)
    x[7] = x[3]  # exact duplicates: ties broken by id
    x[11] = x[3]
    ids = np.arange(n, dtype=np.int64) * 5 + 2
    return x, ids


def _brute_knn(q, x, ids, k, excl=None):
    d = ((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
    if excl is not None:
        d[ids[None, :] == excl[:, None]] = np.inf
    o = np.lexsort((np.broadcast_to(ids, d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, o, 1), ids[o]


def _brute_range(q, x, ids, r2):
    d = ((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
    return [sorted(ids[np.flatnonzero(row < r2)].tolist()) for row in d]


@pytest.mark.parametrize("backend", ["numpy", "faiss", "torch"])  # torch: the GPU path, run on the CPU
def test_exact_knn_and_range_equal_brute_force(backend):
    x, ids = _data()
    q = x[:60]
    ix = make_index("exact", x, ids, params={"backend": backend, "cells": False})
    assert repr(ix).endswith(f"candidates={backend}-cpu)" if backend != "numpy" else "candidates=numpy)")
    d, i = ix.search(q, 7, exclude_ids_Q=ids[:60])
    bd, bi = _brute_knn(q, x, ids, 7, ids[:60])
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=0, atol=1e-9)
    assert i[3][0] == ids[7] and i[3][1] == ids[11]  # the duplicates of row 3, lower id first
    for cells in (False, True):
        ix = make_index("exact", x, ids, params={"backend": backend, "cells": cells})
        lims, d2, got = ix.range_search(q, 6.0)
        ref = _brute_range(q, x, ids, 6.0)
        assert [sorted(got[lims[j]:lims[j + 1]].tolist()) for j in range(60)] == ref
        assert all(np.all(np.diff(d2[lims[j]:lims[j + 1]]) >= 0) for j in range(60))


def _shards(x, ids, n_shards):
    b = np.linspace(0, x.shape[0], n_shards + 1).astype(int)
    return FanoutShards(InProcessFanout([ShardState(ids[b[s]:b[s + 1]], None, x[b[s]:b[s + 1]])
                                         for s in range(n_shards)]))


def test_sharded_exact_search_is_the_same_for_1_2_7_shards():
    x, ids = _data(900)
    q = x[::37]
    results = []
    for n_shards in (1, 2, 7):
        sh = _shards(x, ids, n_shards)
        neighbour_ops.build(sh, "t", "exact")
        results.append((neighbour_ops.knn(sh, "t", q, 9), neighbour_ops.range_search(sh, "t", q, 8.0)))
    bd, bi = _brute_knn(q, x, ids, 9)
    for (d, i), (lims, _d2, rid) in results:
        np.testing.assert_array_equal(i, bi)
        np.testing.assert_array_equal(d, results[0][0][0])
        np.testing.assert_array_equal(rid, results[0][1][2])
        np.testing.assert_array_equal(lims, results[0][1][0])


def test_merge_knn_breaks_ties_by_lower_id():
    a = (np.array([[1.0, 2.0]]), np.array([[9, 4]]))
    b = (np.array([[1.0, np.inf]]), np.array([[3, -1]]))
    d, i = merge_knn([a, b], 3)
    assert i.tolist() == [[3, 9, 4]] and d.tolist() == [[1.0, 1.0, 2.0]]


@pytest.mark.parametrize("mode", ["approx_ivf_flat", "approx_ivf_pq", "approx_hnsw"])
def test_approximate_modes_are_named_and_return_true_distances(mode):
    pytest.importorskip("faiss")
    assert not is_exact(mode) and mode.startswith("approx_")
    x, ids = _data(1500, 16)
    ix = make_index(mode, x, ids, params={"nlist": 16} if "ivf" in mode else {})
    q = x[:40]
    d, i = ix.search(q, 5)
    ok = i >= 0
    pos = (i[ok] - 2) // 5
    true = ((np.repeat(q, 5, 0)[ok.ravel()].astype(np.float64) - x[pos].astype(np.float64)) ** 2).sum(1)
    np.testing.assert_allclose(d[ok], true, atol=1e-9)
    _, bi = _brute_knn(q, x, ids, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(i.tolist(), bi.tolist())])
    assert recall > 0.6  # a sanity floor; the benchmark measures recall properly
    lims, d2, got = ix.range_search(q, 4.0)
    ref = _brute_range(q, x, ids, 4.0)
    for j in range(40):
        assert set(got[lims[j]:lims[j + 1]].tolist()) <= set(ref[j])  # found edges are true edges


def test_ivf_with_constant_rows_per_list_finds_true_edges_in_any_query_order():
    """``list_rows``: IVF-Flat over an HNSW coarse quantizer (lists of about that many rows).
    Its range search (queries taken in the order of their nearest list) returns true
    edges only, the same per query for any query order and any rebuild with the seed, and
    most edges on clustered data; ``row_order`` groups the rows by list."""
    pytest.importorskip("faiss")
    x, ids = _data(3000, 16)
    params = {"list_rows": 32, "nprobe": 8}
    ix = make_index("approx_ivf_flat", x, ids, params=params, seed=3)
    q = x[::7]
    r2 = 6.0
    lims, d2, got = ix.range_search(q, r2)
    ref = _brute_range(q, x, ids, r2)
    found = [set(got[lims[j]:lims[j + 1]].tolist()) for j in range(q.shape[0])]
    assert all(f <= set(r) for f, r in zip(found, ref))  # found edges are true edges
    recall = sum(len(f) for f in found) / sum(len(r) for r in ref)
    assert recall > 0.9  # a sanity floor; benchmarks/neighbours.py measures coverage
    perm = np.random.default_rng(0).permutation(q.shape[0])
    lims_p, d2_p, got_p = ix.range_search(q[perm], r2)
    for a, j in enumerate(perm):
        assert got_p[lims_p[a]:lims_p[a + 1]].tolist() == got[lims[j]:lims[j + 1]].tolist()
        np.testing.assert_array_equal(d2_p[lims_p[a]:lims_p[a + 1]], d2[lims[j]:lims[j + 1]])
    again = make_index("approx_ivf_flat", x, ids, params=params, seed=3).range_search(q, r2)
    for u, v in zip(again, (lims, d2, got)):
        np.testing.assert_array_equal(u, v)
    order = ix.row_order()
    assert sorted(order.tolist()) == list(range(x.shape[0])) and not np.array_equal(order, np.arange(x.shape[0]))
    with pytest.raises(AlscaleError, match="list_rows"):
        make_index("approx_ivf_flat", x, ids, params={"list_rows": 0})


def test_exact_row_order_groups_rows_by_cell():
    x, ids = _data(5000, 12)
    ix = make_index("exact", x, ids)
    order = ix.row_order()
    assert sorted(order.tolist()) == list(range(x.shape[0]))
    np.testing.assert_array_equal(order, ix.cells().order)


def test_mode_names_say_whether_exact():
    assert {m for m, e in MODES.items() if e} == {"exact"}
    with pytest.raises(AlscaleError, match="approximate modes say so"):
        check_mode("hnsw")


@pytest.mark.gpu
def test_gpu_candidate_pass_equals_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x, ids = _data(5000, 32)
    q = x[:100]
    cpu = make_index("exact", x, ids, params={"backend": "numpy"})
    gpu = make_index("exact", x, ids, device="cuda")
    for a, b in zip(cpu.search(q, 10), gpu.search(q, 10)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(cpu.range_search(q, 20.0), gpu.range_search(q, 20.0)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [1, 7, 40])
def test_cell_pruned_knn_equals_brute_force(k):
    x, ids = _data(3000, 10, seed=3)
    rng = np.random.default_rng(5)
    q = np.concatenate([x[:150], (x[150:300] + rng.standard_normal((150, 10)) * 0.3).astype(np.float32),
                        (rng.standard_normal((20, 10)) * 8).astype(np.float32)])  # rows, near rows, far away
    excl = np.concatenate([ids[:150], np.full(170, -1)])
    bd, bi = _brute_knn(q, x, ids, k, excl)
    ix = make_index("exact", x, ids, params={"backend": "numpy", "cells": True})
    for _ in range(2):  # the second call reuses the cells
        d, i = ix.search(q, k, exclude_ids_Q=excl)
        np.testing.assert_array_equal(i, bi)
        np.testing.assert_allclose(d, bd, rtol=0, atol=1e-9)
    assert ix.cells().scan_fraction() < 0.7  # clustered data: the cells prune
    assert i[3][0] == ids[7] and (k == 1 or i[3][1] == ids[11])  # duplicates: ties to the lower id
    d, i = ix.search(q, k)  # without exclusion each row finds itself first
    np.testing.assert_array_equal(i[:150, 0], ids[np.where(np.isin(np.arange(150), (7, 11)), 3, np.arange(150))])


def test_cell_pruned_knn_with_more_neighbours_than_a_cell_and_tiny_pools():
    x, ids = _data(600, 6, seed=4)
    for n in (1, 5, 600):
        ix = make_index("exact", x[:n], ids[:n], params={"cells": True})
        for k in (1, 3, 9, 700):
            d, i = ix.search(x[:30], k)
            bd, bi = _brute_knn(x[:30], x[:n], ids[:n], min(k, n))
            np.testing.assert_array_equal(i[:, :min(k, n)], bi)
            assert (i[:, n:] == -1).all() and np.isinf(d[:, n:]).all()


@pytest.mark.gpu
def test_gpu_paths_are_chosen_at_run_time_and_shards_agree_with_the_cpu():
    """FAISS GPU where the wheel has the device's code, torch on CUDA otherwise; the sharded
    exact search on the device equals the CPU's and brute force."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from alscale.index import cuda_device
    from alscale.index.faiss_backend import faiss_gpu_usable

    x, ids = _data(20000, 32)
    ix = make_index("exact", x, ids, device=cuda_device())
    want = "faiss-gpu" if faiss_gpu_usable(0) else "torch-cuda"
    assert repr(ix).endswith(f"candidates={want})")
    q = x[::97]
    got = []
    for device in (None, "auto"):
        sh = _shards(x, ids, 3)
        neighbour_ops.build(sh, "t", "exact", device=device)
        got.append(neighbour_ops.knn(sh, "t", q, 12))
    bd, bi = _brute_knn(q, x, ids, 12)
    for _d, i in got:
        np.testing.assert_array_equal(i, bi)
    np.testing.assert_array_equal(got[0][0], got[1][0])
