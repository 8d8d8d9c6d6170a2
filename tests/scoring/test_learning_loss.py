"""Learning Loss as a model hook: a third forward output is the score; it survives the cache
and --resume; a model without one is a clear error."""

from __future__ import annotations

import numpy as np
import pyarrow.ipc as ipc
import pytest
import torch

from alscale.errors import AlscaleError
from alscale.jobspec import validate_job
from alscale.pool import pool_table, write_table
from alscale.runtime.coordinator import run_job

MODEL = '''
import torch
from torch import nn

class WithLossModule(nn.Module):
    """A classifier with a loss-prediction head on its penultimate features."""
    def __init__(self, in_features, num_classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(in_features, 16), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(16, num_classes)
        self.loss_module = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        h = self.body(x)
        return self.head(h), h, self.loss_module(h)

def build(in_features, num_classes=4):
    return WithLossModule(in_features, num_classes)
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import sys

    root = tmp_path_factory.mktemp("ll")
    (root / "llmodel.py").write_text(MODEL)
    sys.path.insert(0, str(root))  # the factory is imported by its module path, as users do
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 10)).astype(np.float32)
    pool = root / "pool.arrow"
    write_table(pool_table(np.arange(3000, dtype=np.int64) + 5, features_N_D=x), str(pool))
    yield root, pool, x
    sys.path.remove(str(root))


def _job(root, pool, shards=2, k=1, name="learning_loss"):
    return validate_job({"pool": {"path": str(pool)},
                         "model": {"factory": "llmodel:build", "kwargs": {"in_features": 10, "num_classes": 4},
                                   "mc_samples": k},
                         "strategy": {"name": name, "budget": 25}, "runtime": {"executor": "local", "shards": shards}})


def _reference(root, x):
    import importlib.util

    spec = importlib.util.spec_from_file_location("llmodel_ref", root / "llmodel.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.build(10).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x))[2][:, 0].double().numpy()


@pytest.mark.parametrize("shards, k", [(1, 1), (3, 1), (2, 5)])
def test_learning_loss_picks_the_largest_predicted_loss(setup, tmp_path, shards, k):
    root, pool, x = setup
    res = run_job(_job(root, pool, shards, k), out_dir=tmp_path / "out", progress=False)
    pred = _reference(root, x)
    want = np.lexsort((np.arange(3000), -pred))[:25] + 5
    assert res.selection.indices_B.tolist() == want.tolist()
    np.testing.assert_allclose(res.selection.scores_B, np.sort(pred)[::-1][:25], rtol=1e-5)


def test_the_predicted_loss_is_cached_and_resumed(setup, tmp_path):
    root, pool, _ = setup
    out = tmp_path / "out"
    first = run_job(_job(root, pool), out_dir=out, progress=False)
    f = sorted((out / "cache").glob("rows-*.arrow"))[0]
    assert "loss" in ipc.open_file(str(f)).read_all().column_names
    (out / "manifest.json").unlink()
    again = run_job(_job(root, pool), out_dir=out, resume=True, progress=False)
    assert again.manifest["cache"]["computed"] == [] and len(again.manifest["cache"]["reused"]) == 2
    assert again.selection.indices_B.tolist() == first.selection.indices_B.tolist()


def test_a_model_without_a_loss_module_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    pool = tmp_path / "p.arrow"
    write_table(pool_table(np.arange(100, dtype=np.int64), features_N_D=rng.normal(size=(100, 6)).astype(np.float32)),
                str(pool))
    job = validate_job({"pool": {"path": str(pool)}, "model": {"factory": "mlp", "kwargs": {"num_classes": 3}},
                        "strategy": {"name": "learning_loss", "budget": 5}, "runtime": {"executor": "local"}})
    with pytest.raises(AlscaleError, match=r"needs the model's predicted loss: return \(logits, embedding, "):
        run_job(job, out_dir=tmp_path / "o", progress=False)


def test_notebook_select_with_a_loss_module_equals_the_job(setup, tmp_path):
    """``alscale.select("learning_loss", model=, data=)`` reads the third output as the job does."""
    import alscale

    root, pool, x = setup
    res = run_job(_job(root, pool, 2, 1), out_dir=tmp_path / "out", progress=False)
    import llmodel

    sel = alscale.select("learning_loss", budget=25, model=llmodel.build(10), data=x)
    assert (sel.indices + 5).tolist() == res.selection.indices_B.tolist()
    np.testing.assert_array_equal(sel.scores, res.selection.scores_B)
