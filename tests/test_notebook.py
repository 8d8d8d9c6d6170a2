"""``alscale.select(model=, data=)`` scores like the shard workers: the same selection as the job path."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import alscale
from alscale.cli import main
from alscale.errors import AlscaleError
from alscale.notebook import ActiveLearner, as_rows
from alscale.pool import pool_table, write_table
from tests.notebook_fixture import plain

N, D, C = 300, 8, 4


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((C, D)) * 2
    return (centres[rng.integers(0, C, N)] + rng.standard_normal((N, D))).astype(np.float32)


def _job_selection(tmp_path, X, model, strategy, factory, *, mc_samples, budget, labeled=None, seed=0):
    """``alscale run`` of the job equivalent to ``select(strategy, model=model, data=X, ...)``."""
    pool = tmp_path / "pool.arrow"
    write_table(pool_table(np.arange(len(X), dtype=np.int64), features_N_D=X), str(pool))
    ckpt = tmp_path / "model.pt"
    torch.save(model.state_dict(), ckpt)
    lab = "null"
    if labeled is not None:
        pq.write_table(pa.table({"row_id": np.asarray(labeled, np.int64)}), tmp_path / "labeled.parquet")
        lab = str(tmp_path / "labeled.parquet")
    job = tmp_path / "job.yaml"
    job.write_text(f"""pool: {{path: {pool}}}
labeled: {{path: {lab}}}
model: {{factory: "tests.notebook_fixture:{factory}", kwargs: {{in_features: {D}, num_classes: {C}}},
        checkpoint: {ckpt}, mc_samples: {mc_samples}, batch_size: 50}}
strategy: {{name: {strategy}, budget: {budget}}}
runtime: {{executor: local, shards: 2, chunk_rows: 64}}
seed: {seed}
""")
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out), "--force", "--no-progress"]) == 0
    t = pq.read_table(out / "selection.parquet")
    return t["row_id"].to_numpy(), t["score"].to_numpy()


def test_bald_on_a_plain_module_equals_the_job_path(tmp_path, X):
    m = plain(D, C)
    sel = alscale.select("bald", budget=10, model=m, data=X, mc_samples=20)
    ids, scores = _job_selection(tmp_path, X, m, "bald", "plain", mc_samples=20, budget=10)
    assert len(sel) == 10
    np.testing.assert_array_equal(sel.indices, ids)
    np.testing.assert_array_equal(sel.scores, scores)  # bit-identical log-probs -> identical scores
    assert isinstance(m[2], torch.nn.Dropout) and m.training  # the caller's module is left as it was


def test_labeled_rows_and_seed_match_the_job_path(tmp_path, X):
    m = plain(D, C, seed=3)
    labeled = [int(i) for i in alscale.select("bald", budget=5, model=m, data=X, mc_samples=8, seed=4).indices]
    sel = alscale.select("bald", budget=7, model=m, data=X, mc_samples=8, labeled=labeled, seed=4)
    assert not set(sel.indices) & set(labeled)
    ids, scores = _job_selection(tmp_path, X, m, "bald", "plain", mc_samples=8, budget=7, labeled=labeled, seed=4)
    np.testing.assert_array_equal(sel.indices, ids)
    np.testing.assert_array_equal(sel.scores, scores)


def test_penultimate_embeddings_are_the_jobs_embedding_output(tmp_path, X):
    """BADGE on a logits-only module (embedding = input of its last nn.Linear, by a hook) equals
    the job whose model returns (logits, that input) with the same weights."""
    m = plain(D, C, seed=1)
    sel = alscale.select("badge", budget=12, model=m, data=X, embeddings="penultimate")
    ids, scores = _job_selection(tmp_path, X, m, "badge", "with_embedding", mc_samples=1, budget=12)
    np.testing.assert_array_equal(sel.indices, ids)
    np.testing.assert_array_equal(sel.scores, scores)
    assert not m[-1]._forward_hooks  # the hook is gone after each forward pass


def test_every_input_kind_gives_the_same_selection(X):
    m = plain(D, C)
    ref = alscale.select("bald", budget=10, model=m, data=X, mc_samples=5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(X), torch.zeros(N)),
                                         batch_size=64, shuffle=False)
    table = pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), D)})
    for data in (torch.tensor(X), loader, table, table.to_batches()[0]):
        got = alscale.select("bald", budget=10, model=m, data=data, mc_samples=5)
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_array_equal(got.scores, ref.scores)
    # rows of any shape go back to the model in their shape
    shaped = torch.nn.Sequential(torch.nn.Flatten(), *plain(D, C))
    got = alscale.select("bald", budget=10, model=shaped, data=X.reshape(N, 2, 4), mc_samples=5)
    np.testing.assert_array_equal(got.indices, ref.indices)


def test_callable_embeddings_and_errors(X):
    m = plain(D, C)
    sel = alscale.select("kcenter", budget=6, model=m, data=X, embeddings=lambda x: x[:, :3])
    ref = alscale.select("kcenter", budget=6, embeddings=X[:, :3].copy())
    np.testing.assert_array_equal(sel.indices, ref.indices)
    shuffled = torch.utils.data.DataLoader(torch.tensor(X), batch_size=10, shuffle=True)
    with pytest.raises(AlscaleError, match="shuffle=True"):
        as_rows(shuffled)
    with pytest.raises(AlscaleError, match="no dropout layers"):
        alscale.select("bald", budget=3, model=torch.nn.Linear(D, C), data=X, mc_samples=4)
    with pytest.raises(AlscaleError, match="not both"):
        alscale.select("bald", budget=3, model=m, data=X, log_probs=np.zeros((N, 2, C)))
    with pytest.raises(AlscaleError, match="features"):
        alscale.select("entropy", budget=3, model=m, data=pa.table({"x": [1.0]}))


def test_active_learner_loop(X):
    rng = np.random.default_rng(1)
    y = np.argmax(X[:, :C], axis=1)
    learner = ActiveLearner(plain(D, C), X, strategy="bald", mc_samples=8)
    start = rng.choice(N, 8, replace=False)
    learner.teach(start, y[start])
    learner.fit(epochs=2, draws_per_epoch=256)
    batch = learner.query(10)
    assert batch.size == 10 and not set(batch) & set(start)
    learner.teach(batch, y[batch])
    learner.fit(epochs=2, draws_per_epoch=256)
    nxt = learner.query(10)
    assert not set(nxt) & set(learner.labeled_ids) and learner.round == 2
    with pytest.raises(AlscaleError, match="twice"):
        learner.teach(batch[:1], y[batch[:1]])
