"""Retraining for the active-learning loop: seeded, early stopping keeps the best epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alscale.errors import AlscaleError
from alscale.scoring import ModelSpec
from alscale.scoring.train import epoch_indices, evaluate, fresh_model, train_classifier

SPEC = ModelSpec("mlp", {"num_classes": 3, "hidden": 32, "depth": 1, "dropout": 0.2})


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.array([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]], np.float32)
    return (centers[y] + rng.normal(size=(n, 4)).astype(np.float32)), y


def test_training_learns_and_is_reproducible() -> None:
    x, y = _blobs(60, 0)
    xt, yt = _blobs(300, 1)
    accs = []
    for _ in range(2):
        model = fresh_model(SPEC, 4, init_seed=7)
        result = train_classifier(model, x, y, seed=3, epochs=5, draws_per_epoch=256, lr=0.02, patience=None)
        accs.append(evaluate(model, xt, yt))
        assert result.epochs == 5 and result.best_epoch == 5 and result.val_accuracy is None
        assert not model.training
    assert accs[0] == accs[1]
    assert accs[0][0] > 0.9 and accs[0][1] < 0.4
    untrained = evaluate(fresh_model(SPEC, 4, init_seed=7), xt, yt)
    assert untrained[0] < 0.7


def test_fresh_model_is_seeded_and_ignores_the_checkpoint(tmp_path) -> None:
    a, b, c = (fresh_model(SPEC, 4, s) for s in (1, 1, 2))
    for pa_, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa_, pb)
    assert not all(torch.equal(pa_, pc) for pa_, pc in zip(a.parameters(), c.parameters()))
    import dataclasses

    missing = dataclasses.replace(SPEC, checkpoint=str(tmp_path / "nope.pt"))
    fresh_model(missing, 4, 1)  # no error: a fresh model never loads the checkpoint


def test_early_stopping_keeps_the_best_validation_weights() -> None:
    x, y = _blobs(30, 2)
    xv, yv = _blobs(100, 3)
    model = fresh_model(SPEC, 4, init_seed=0)
    result = train_classifier(model, x, y, seed=0, x_val_V_D=xv, y_val_V=yv, epochs=30, draws_per_epoch=64,
                              patience=2, lr=0.05)
    assert result.epochs <= 30 and result.best_epoch <= result.epochs
    assert result.epochs == 30 or result.epochs - result.best_epoch == 2
    assert evaluate(model, xv, yv)[0] == pytest.approx(result.val_accuracy)


def test_epoch_indices_cycle_evenly() -> None:
    g = torch.Generator().manual_seed(0)
    idx = epoch_indices(7, 100, g)
    counts = np.bincount(idx.numpy(), minlength=7)
    assert idx.numel() == 100 and counts.max() - counts.min() <= 1
    assert sorted(epoch_indices(7, None, g).tolist()) == list(range(7))


def test_bad_inputs() -> None:
    model = fresh_model(SPEC, 4, 0)
    with pytest.raises(AlscaleError, match="N >= 1"):
        train_classifier(model, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), seed=0, patience=None)
    with pytest.raises(AlscaleError, match="needs a validation set"):
        train_classifier(model, np.zeros((3, 4), np.float32), np.zeros(3, np.int64), seed=0, patience=3)
