"""k-center through job files: the embedding source, and the same selection.parquet for
1/2/7 shards, local and Ray executors, gather and sharded modes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from alscale.errors import AlscaleError, JobError
from alscale.jobspec import validate_job
from alscale.pool import pool_table, write_table
from alscale.runtime.coordinator import run_job
from tests.strategies.test_kcenter import oracle


@pytest.fixture(scope="module")
def emb_pool(tmp_path_factory):
    """3,000 rows: features [6], an embedding column [8] with duplicate rows, shuffled row ids."""
    rng = np.random.default_rng(7)
    n = 3000
    emb = rng.standard_normal((n, 8)).astype(np.float32)
    emb[100:130] = emb[5]  # duplicates
    ids = rng.permutation(50_000)[:n].astype(np.int64)
    feats = rng.standard_normal((n, 6)).astype(np.float32)
    root = tmp_path_factory.mktemp("kc")
    path = root / "emb.arrow"
    write_table(pool_table(ids, features_N_D=feats, embeddings_N_D=emb), str(path), rows_per_batch=700)
    labeled = root / "labeled.csv"
    labeled.write_text("row_id\n" + "\n".join(str(i) for i in ids[::50]) + "\n")
    return path, labeled, ids, emb, feats


def _job(pool, out, **over):
    raw = {
        "pool": {"path": str(pool)},
        "strategy": {"name": "kcenter", "budget": 40},
        "runtime": {"executor": "local", "shards": 1},
        "output": str(out),
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    return validate_job(raw)


def _ids(out):
    return pq.read_table(out / "selection.parquet").column("row_id").to_pylist()


def test_local_job_matches_the_oracle_for_1_and_7_shards(emb_pool, tmp_path):
    path, labeled, ids, emb, _ = emb_pool
    expect, scores = oracle(emb, ids, ids[::50], 40)
    for shards, opts in [(1, {}), (7, {"backend": "numpy", "offer_rows": 4}), (2, {"mode": "gather"})]:
        out = tmp_path / f"l{shards}"
        job = _job(path, out, labeled__path=str(labeled), runtime__shards=shards, strategy__options=opts)
        result = run_job(job, progress=False)
        assert _ids(out) == expect.tolist()
        np.testing.assert_array_equal(result.selection.scores_B, scores)
    manifest = json.loads((tmp_path / "l1" / "manifest.json").read_text())
    assert manifest["strategy"] == "kcenter" and manifest["round_trips"] <= 10


@pytest.mark.ray
def test_ray_job_matches_local(emb_pool, tmp_path, ray_session):
    path, labeled, ids, emb, _ = emb_pool
    expect, _ = oracle(emb, ids, [], 40)
    out = tmp_path / "ray"
    run_job(_job(path, out, runtime__executor="ray", runtime__shards=3), progress=False)
    assert _ids(out) == expect.tolist()


def test_embedding_source_choices(emb_pool, tmp_path):
    path, _, ids, emb, feats = emb_pool
    model = {"factory": "linear", "kwargs": {"num_classes": 3}}
    # auto with a model: the model's penultimate layer (for "linear": the features themselves)
    run_job(_job(path, tmp_path / "m", model=model), progress=False)
    assert _ids(tmp_path / "m") == oracle(feats, ids, [], 40)[0].tolist()
    # column with a model: the pool's column, the model is not run
    run_job(_job(path, tmp_path / "c", model=model, strategy__embedding="column"), progress=False)
    assert _ids(tmp_path / "c") == oracle(emb, ids, [], 40)[0].tolist()


def test_embedding_source_is_validated(tmp_path, emb_pool):
    with pytest.raises(JobError, match="strategy.embedding must be one of auto, column, model; got 'pixels'"):
        _job("p.arrow", tmp_path, strategy__embedding="pixels")
    with pytest.raises(JobError, match="strategy.embedding is model but the job has no model"):
        _job("p.arrow", tmp_path, strategy__embedding="model")
    assert _job("p.arrow", tmp_path).strategy.embedding == "auto"
    pool = tmp_path / "noemb.arrow"
    rng = np.random.default_rng(0)
    write_table(pool_table(np.arange(50, dtype=np.int64), features_N_D=rng.standard_normal((50, 4)).astype(np.float32)),
                str(pool))
    with pytest.raises(AlscaleError, match="strategy kcenter takes embeddings from the pool's 'embedding' column"):
        run_job(_job(pool, tmp_path / "o"), progress=False)
    with pytest.raises(AlscaleError, match="option mode must be one of"):
        _job(pool, tmp_path / "o", strategy__options={"mode": "x"})


def test_synth_embedding_column_is_a_fixed_map_of_the_features(tmp_path):
    from alscale.pool import read_shard, synth_pool
    from alscale.types import ShardSpec

    a = synth_pool(str(tmp_path / "a.arrow"), rows=300, dim=5, classes=3, seed=1, log_probs_samples=1)
    b = synth_pool(str(tmp_path / "b.arrow"), rows=300, dim=5, classes=3, seed=1, log_probs_samples=1,
                   embedding_dim=12, chunk_rows=70)
    assert a.embedding_dim is None and b.embedding_dim == 12
    cols = ["features", "log_probs", "label"]
    da = read_shard(ShardSpec(a.path, 0, 0, 300), cols)
    db = read_shard(ShardSpec(b.path, 0, 0, 300), [*cols, "embedding"])
    np.testing.assert_array_equal(da.features_N_D, db.features_N_D)  # other columns unchanged
    np.testing.assert_array_equal(da.log_probs_N_K_C, db.log_probs_N_K_C)
    w, *_ = np.linalg.lstsq(db.features_N_D.astype(np.float64), db.embeddings_N_D.astype(np.float64), rcond=None)
    np.testing.assert_allclose(db.features_N_D @ w, db.embeddings_N_D, atol=1e-4)  # linear in the features


@pytest.mark.gpu
def test_cuda_backend_gives_the_same_selection():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from alscale.strategies import FanoutShards, InProcessFanout, ShardState
    from alscale.strategies.kcenter import kcenter_greedy

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 64)).astype(np.float32)
    ids = np.arange(20_000, dtype=np.int64)
    expect, _ = oracle(x, ids, ids[::100], 200)
    for mode in ("sharded", "gather"):
        states = [ShardState(ids[a : a + 5000], None, x[a : a + 5000]) for a in range(0, 20_000, 5000)]
        shards = FanoutShards(InProcessFanout(states))
        shards.exclude(ids[::100])
        r = kcenter_greedy(shards, 200, backend="torch", mode=mode)
        assert "cuda" in r.stats.backend
        np.testing.assert_array_equal(r.row_ids_B, expect)
