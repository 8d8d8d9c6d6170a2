"""``alscale dedup``: planted near-duplicates are grouped (exact: all of them, the same for
any shard count, equal to brute force), the mask keeps the lowest row of each group, and
bad input is one clear error with exit 2."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from alscale.cli import main
from alscale.pool.arrays import pool_table
from alscale.pool.write import PoolWriter
from alscale.strategies import FanoutShards, InProcessFanout, ShardState
from alscale.strategies.dedup import components, near_duplicates


def _planted(n=1200, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32) * 3
    src = rng.choice(n // 2, 60, replace=False)
    dst = n // 2 + np.arange(60)
    x[dst] = x[src] + rng.standard_normal((60, d)).astype(np.float32) * 1e-3
    x[dst[:10] + 100] = x[src[:10]] + 2e-3  # groups of three
    return x, src, dst


def _write(path, x):
    with PoolWriter(str(path), format="ipc") as w:
        w.write(pool_table(np.arange(x.shape[0], dtype=np.int64) * 10, embeddings_N_D=x))


def _brute_groups(x, r):
    d = ((x[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
    a, b = np.nonzero(np.triu(d <= r * r, 1))
    return components(x.shape[0], a, b)


@pytest.mark.parametrize("n_shards", [1, 2, 7])
def test_exact_groups_equal_brute_force_for_any_sharding(n_shards):
    x, src, dst = _planted()
    ids = np.arange(x.shape[0], dtype=np.int64)
    b = np.linspace(0, x.shape[0], n_shards + 1).astype(int)
    sh = FanoutShards(InProcessFanout([ShardState(ids[b[s]:b[s + 1]], None, x[b[s]:b[s + 1]])
                                       for s in range(n_shards)]))
    res = near_duplicates(sh, 0.05, chunk_rows=300)
    np.testing.assert_array_equal(res.group_N, _brute_groups(x, 0.05))
    assert (res.group_N[dst] == src).all()
    assert res.keep_N.sum() == x.shape[0] - 70


def test_cli_writes_groups_and_mask(tmp_path, capsys):
    x, src, dst = _planted()
    _write(tmp_path / "p.arrow", x)
    out = tmp_path / "dd"
    assert main(["dedup", str(tmp_path / "p.arrow"), "--threshold", "0.05", "--out", str(out)]) == 0
    keep = pq.read_table(out / "keep.parquet").to_pydict()
    assert sum(keep["keep"]) == x.shape[0] - 70
    groups = pq.read_table(out / "groups.parquet").to_pydict()
    assert set(groups["row_id"]) >= set((dst * 10).tolist())
    assert main(["dedup", str(tmp_path / "p.arrow"), "--threshold", "0.05", "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["dedup", str(tmp_path / "p.arrow"), "--threshold", "-1", "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()


def test_approximate_dedup_is_named_and_finds_the_plants(tmp_path):
    pytest.importorskip("faiss")
    x, src, dst = _planted()
    _write(tmp_path / "p.arrow", x)
    assert main(["dedup", str(tmp_path / "p.arrow"), "--threshold", "0.05", "--out", str(tmp_path / "a"),
                 "--mode", "approx_hnsw"]) == 0
    keep = pq.read_table(tmp_path / "a" / "keep.parquet").to_pydict()
    found = np.array(keep["group"])[dst] == src * 10
    assert found.mean() >= 0.9
    assert main(["dedup", str(tmp_path / "p.arrow"), "--threshold", "0.05", "--out", str(tmp_path / "b"),
                 "--mode", "hnsw"]) == 2
