"""Scorer: output contract, consistent MC dropout (Kirsch et al. 2019) and row-wise bit-identity."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from alscale.errors import AlscaleError
from alscale.scoring import ConsistentMCDropout, ConsistentMCDropout2d, ModelSpec, Scorer, build_model
from alscale.scoring.builtins import MaxPool2x2
from alscale.scoring.dropout import mc_dropout_layers

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = "tests.scoring.factory_fixture"
MLP = {"num_classes": 10}


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))


def _features(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(size=(n, 784), dtype=np.float32)


def _score(factory: str, kwargs: dict, x: np.ndarray, *, k: int, seed: int = 0, batch_size: int = 4096):
    spec = ModelSpec(factory, kwargs, mc_samples=k, batch_size=batch_size, device="cpu")
    return Scorer(spec, in_features=x.shape[1], seed=seed).score(x)


def _check_log_probs(log_probs: np.ndarray, n: int, k: int, c: int) -> None:
    assert log_probs.shape == (n, k, c) and log_probs.dtype == np.float32
    assert np.isfinite(log_probs).all()
    np.testing.assert_allclose(np.logaddexp.reduce(log_probs.astype(np.float64), axis=-1), 0.0, atol=1e-5)


@pytest.mark.parametrize(
    ("factory", "kwargs", "d", "c", "e"),
    [("linear", {"num_classes": 4}, 12, 4, 12), ("mlp", MLP, 64, 10, 256), ("mnist_cnn", {}, 784, 10, 128),
     ("gal_cnn", {}, 784, 10, 128)],
)
def test_k1_shapes_normalised_and_deterministic(factory: str, kwargs: dict, d: int, c: int, e: int) -> None:
    x = _images(20) if d == 784 else _features(20, d)
    scorer = Scorer(ModelSpec(factory, kwargs), in_features=d, seed=0)
    assert scorer.n_classes is None
    log_probs, embeddings = scorer.score(x)
    _check_log_probs(log_probs, 20, 1, c)
    assert embeddings is not None and embeddings.shape == (20, e) and embeddings.dtype == np.float32
    assert scorer.n_classes == c and scorer.embedding_dim == e
    model = build_model(ModelSpec(factory, kwargs), in_features=d)  # dropout off = plain eval forward
    with torch.no_grad():
        logits, embedding = model(torch.from_numpy(x))
    np.testing.assert_allclose(log_probs[:, 0], torch.log_softmax(logits, -1).numpy(), atol=1e-6)
    np.testing.assert_allclose(embeddings, embedding.numpy(), atol=1e-6)


@pytest.mark.parametrize(("factory", "kwargs", "d"), [("mlp", MLP, 64), ("mnist_cnn", {}, 784), ("gal_cnn", {}, 784)])
def test_mc_samples_differ_and_embeddings_come_from_the_deterministic_pass(factory: str, kwargs: dict, d: int) -> None:
    x = _images(12) if d == 784 else _features(40, d)
    log_probs, embeddings = _score(factory, kwargs, x, k=6)
    _check_log_probs(log_probs, len(x), 6, 10)
    for a in range(6):
        for b in range(a + 1, 6):
            assert not np.array_equal(log_probs[:, a], log_probs[:, b]), (a, b)
    _, embeddings_k1 = _score(factory, kwargs, x, k=1)
    np.testing.assert_array_equal(embeddings, embeddings_k1)


def test_k1_is_independent_of_seed() -> None:
    x = _features(30, 64)
    np.testing.assert_array_equal(_score("mlp", MLP, x, k=1, seed=0)[0], _score("mlp", MLP, x, k=1, seed=9)[0])


def test_seed_changes_masks_and_same_seed_reproduces() -> None:
    x = _features(30, 64)
    a = _score("mlp", MLP, x, k=4, seed=1)[0]
    np.testing.assert_array_equal(a, _score("mlp", MLP, x, k=4, seed=1)[0])
    assert not np.array_equal(a, _score("mlp", MLP, x, k=4, seed=2)[0])


# --- bit-identity: a row's outputs never depend on batch size, slice, order, process or threads ---


@pytest.fixture(scope="module")
def mlp_reference() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = _features(1000, 64, seed=3)
    log_probs, embeddings = _score("mlp", MLP, x, k=4, seed=11)
    return x, log_probs, embeddings


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 7, 8, 11, 13, 16, 33, 999, 1000, 1001])
def test_mlp_bit_identical_across_batch_sizes(mlp_reference, batch_size: int) -> None:
    x, ref_log_probs, ref_embeddings = mlp_reference
    # Without MIN_FORWARD_ROWS padding, short (last) batches of 1-11 rows differ in the last bits;
    # these sizes leave last batches of 1, 1, 1, 1, 5, 5, 6, 9, 12, 3 rows (and 999 rows + 1 row).
    n = 61 if batch_size < 16 else (300 if batch_size < 999 else len(x))
    log_probs, embeddings = _score("mlp", MLP, x[:n], k=4, seed=11, batch_size=batch_size)
    np.testing.assert_array_equal(log_probs, ref_log_probs[:n])
    np.testing.assert_array_equal(embeddings, ref_embeddings[:n])


@pytest.mark.parametrize("batch_size", [1, 3, 4096])
def test_mlp_bit_identical_for_slices_and_orders(mlp_reference, batch_size: int) -> None:
    x, ref_log_probs, ref_embeddings = mlp_reference
    for r in (3, 4, 250, 517, 994):
        log_probs, embeddings = _score("mlp", MLP, x[r - 3 : r + 5], k=4, seed=11, batch_size=batch_size)
        np.testing.assert_array_equal(log_probs, ref_log_probs[r - 3 : r + 5], err_msg=f"row {r}")
        np.testing.assert_array_equal(embeddings, ref_embeddings[r - 3 : r + 5])
    order = np.random.default_rng(0).permutation(len(x))[:50]
    log_probs, _ = _score("mlp", MLP, x[order], k=4, seed=11, batch_size=batch_size)
    np.testing.assert_array_equal(log_probs, ref_log_probs[order])


def test_mlp_bit_identical_with_one_thread_and_after_pickling(mlp_reference) -> None:
    x, ref_log_probs, _ = mlp_reference
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        np.testing.assert_array_equal(_score("mlp", MLP, x[:61], k=4, seed=11, batch_size=7)[0], ref_log_probs[:61])
    finally:
        torch.set_num_threads(threads)
    scorer = Scorer(ModelSpec("mlp", MLP, mc_samples=4, device="cpu"), in_features=64, seed=11)
    scorer.score(x[:10])  # built and masks drawn ...
    shipped = pickle.loads(pickle.dumps(scorer))  # ... but a worker receives only spec, D and seed
    assert shipped.n_classes is None
    np.testing.assert_array_equal(shipped.score(x[500:520])[0], ref_log_probs[500:520])
    np.testing.assert_array_equal(scorer.score(x[500:520])[0], ref_log_probs[500:520])  # reusable


def test_one_scorer_is_consistent_across_calls(mlp_reference) -> None:
    x, ref_log_probs, _ = mlp_reference
    scorer = Scorer(ModelSpec("mlp", MLP, mc_samples=4, batch_size=64), in_features=64, seed=11)
    for lo, hi in [(900, 1000), (0, 1), (17, 400)]:
        np.testing.assert_array_equal(scorer.score(x[lo:hi])[0], ref_log_probs[lo:hi])


@pytest.mark.parametrize("factory", ["mnist_cnn", "gal_cnn"])
def test_cnn_bit_identical_across_batch_sizes_and_slices(factory: str) -> None:
    x = _images(30, seed=4)
    ref_log_probs, ref_embeddings = _score(factory, {}, x, k=4, seed=5)
    for batch_size, n in ((1, 5), (7, 30), (29, 30)):
        log_probs, embeddings = _score(factory, {}, x[:n], k=4, seed=5, batch_size=batch_size)
        np.testing.assert_array_equal(log_probs, ref_log_probs[:n], err_msg=f"batch_size {batch_size}")
        np.testing.assert_array_equal(embeddings, ref_embeddings[:n])
    for r in (3, 25):
        log_probs, _ = _score(factory, {}, x[r - 3 : r + 5], k=4, seed=5, batch_size=3)
        np.testing.assert_array_equal(log_probs, ref_log_probs[r - 3 : r + 5], err_msg=f"row {r}")


# --- masks -------------------------------------------------------------------------------------


def test_masks_are_fixed_per_layer_and_independent_of_n() -> None:
    small = Scorer(ModelSpec("mnist_cnn", mc_samples=6), in_features=784, seed=3)
    small.score(_images(1))
    large = Scorer(ModelSpec("mnist_cnn", mc_samples=6, batch_size=20), in_features=784, seed=3)
    large.score(_images(50))
    small_layers, large_layers = mc_dropout_layers(small.model), mc_dropout_layers(large.model)
    assert [type(m) for m in small_layers] == [ConsistentMCDropout2d, ConsistentMCDropout2d, ConsistentMCDropout]
    shapes = [tuple(m._masks.shape) for m in small_layers]
    assert shapes == [(6, 32, 1, 1), (6, 64, 1, 1), (6, 128)]  # whole channels for the convs
    for a, b in zip(small_layers, large_layers):
        assert torch.equal(a._masks, b._masks)
        assert set(torch.unique(a._masks).tolist()) <= {0.0, 2.0}  # kept units scaled by 1 / (1 - p)
        assert 0.3 < float((a._masks > 0).float().mean()) < 0.7


def test_layers_with_the_same_shape_get_different_masks() -> None:
    scorer = Scorer(ModelSpec("mlp", MLP, mc_samples=8), in_features=64, seed=0)
    scorer.score(_features(2, 64))
    first, second = mc_dropout_layers(scorer.model)
    assert first._masks.shape == second._masks.shape == (8, 256)
    assert not torch.equal(first._masks, second._masks)


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", True])
def test_dropout_probability_is_checked(p: object) -> None:
    with pytest.raises(AlscaleError, match="dropout probability"):
        ConsistentMCDropout(p)  # type: ignore[arg-type]


def test_dropout_layers_train_like_ordinary_dropout() -> None:
    layer = ConsistentMCDropout(0.5).train()
    x = torch.ones(4, 1000)
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b) and not torch.equal(a[0], a[1])
    assert torch.equal(layer.eval()(x), x)
    channel = ConsistentMCDropout2d(0.5).train()
    out = channel(torch.ones(3, 64, 5, 5))
    per_channel = out.flatten(2)
    assert torch.equal(per_channel.amax(-1), per_channel.amin(-1))  # whole channels dropped


@pytest.mark.parametrize(
    ("factory", "kwargs", "d"), [("mlp", {"num_classes": 10, "depth": 3}, 64), ("mnist_cnn", {}, 784)]
)
def test_prefix_shortcut_changes_nothing(factory: str, kwargs: dict, d: int) -> None:
    x = _images(20) if d == 784 else _features(50, d)
    with_prefix = Scorer(ModelSpec(factory, kwargs, mc_samples=4, batch_size=16), in_features=d, seed=8)
    without = Scorer(ModelSpec(factory, kwargs, mc_samples=4, batch_size=16), in_features=d, seed=8)
    assert with_prefix.model is not None and without.model is not None and with_prefix._has_prefix
    without._has_prefix = False  # K full forward passes instead
    for a, b in zip(with_prefix.score(x), without.score(x)):
        np.testing.assert_array_equal(a, b)


def test_max_pool_2x2_is_bit_identical_to_nn_max_pool() -> None:
    reference = torch.nn.MaxPool2d(2)
    for shape in [(3, 32, 24, 24), (2, 4, 7, 9), (1, 1, 2, 2)]:
        x = torch.randn(shape)
        assert torch.equal(MaxPool2x2()(x), reference(x)), shape


# --- user models ----------------------------------------------------------------------------------


def test_user_model_nn_dropout_becomes_consistent() -> None:
    x = _features(40, 6)
    ref, embeddings = _score(f"{FIXTURE}:make", {}, x, k=5, seed=3)
    _check_log_probs(ref, 40, 5, 3)
    assert embeddings is not None and embeddings.shape == (40, 8)
    assert not np.array_equal(ref[:, 0], ref[:, 1])
    np.testing.assert_array_equal(_score(f"{FIXTURE}:make", {}, x[10:13], k=5, seed=3, batch_size=2)[0], ref[10:13])
    scorer = Scorer(ModelSpec(f"{FIXTURE}:make", mc_samples=5), in_features=6, seed=3)
    scorer.score(x[:1])
    assert [type(m) for m in mc_dropout_layers(scorer.model)] == [ConsistentMCDropout]


def test_user_conv_model_dropout2d_is_channel_wise() -> None:
    scorer = Scorer(ModelSpec(f"{FIXTURE}:make_conv", mc_samples=3), in_features=64, seed=0)
    log_probs, embeddings = scorer.score(_features(5, 64))
    _check_log_probs(log_probs, 5, 3, 3)
    assert embeddings is None
    (layer,) = mc_dropout_layers(scorer.model)
    assert isinstance(layer, ConsistentMCDropout2d) and layer._masks.shape == (3, 4, 1, 1)


def test_logits_only_model_gives_no_embeddings() -> None:
    for k in (1, 4):
        scorer = Scorer(ModelSpec(f"{FIXTURE}:make_logits_only", mc_samples=k), in_features=6, seed=0)
        log_probs, embeddings = scorer.score(_features(9, 6))
        _check_log_probs(log_probs, 9, k, 4)
        assert embeddings is None and scorer.embedding_dim is None


# --- inputs ----------------------------------------------------------------------------------------


def test_read_only_memory_mapped_input(tmp_path: Path) -> None:
    x = _features(50, 64)
    path = tmp_path / "features.f32"
    x.tofile(path)
    view = np.memmap(path, dtype=np.float32, mode="r", shape=(50, 64))
    assert not view.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_probs, _ = _score("mlp", MLP, view, k=3, batch_size=16)
    np.testing.assert_array_equal(log_probs, _score("mlp", MLP, x, k=3)[0])
    np.testing.assert_array_equal(np.asarray(view), x)
    strided = np.asarray(view)[::2]  # non-contiguous read-only view
    np.testing.assert_array_equal(_score("mlp", MLP, strided, k=3)[0], log_probs[::2])


def test_float64_input_is_cast() -> None:
    x = _features(10, 64)
    np.testing.assert_array_equal(_score("mlp", MLP, x.astype(np.float64), k=2)[0], _score("mlp", MLP, x, k=2)[0])


def test_empty_input() -> None:
    log_probs, embeddings = _score("mlp", MLP, np.zeros((0, 64), np.float32), k=3)
    assert log_probs.shape == (0, 3, 10) and embeddings is not None and embeddings.shape == (0, 256)


@pytest.mark.parametrize(
    ("features", "culprit"),
    [
        (np.zeros((3, 5), np.float32), "[N, 6]"),
        (np.zeros(6, np.float32), "[N, 6]"),
        (np.zeros((3, 6), np.int64), "int64"),
        ([[0.0] * 6], "list"),
    ],
)
def test_bad_features(features: object, culprit: str) -> None:
    scorer = Scorer(ModelSpec("linear", {"num_classes": 3}), in_features=6, seed=0)
    with pytest.raises(AlscaleError) as info:
        scorer.score(features)  # type: ignore[arg-type]
    assert culprit in str(info.value)


def test_non_finite_features_name_row_and_column() -> None:
    x = _features(40, 6)
    x[33, 4] = np.inf
    scorer = Scorer(ModelSpec("linear", {"num_classes": 3}, batch_size=16), in_features=6, seed=0)
    with pytest.raises(AlscaleError, match=r"row 33 column 4 is inf"):
        scorer.score(x)


@pytest.mark.parametrize(
    ("factory", "k", "culprit"),
    [
        ("make_deterministic", 4, "no dropout layers"),
        ("make_alpha", 4, "AlphaDropout"),
        ("make_bad_output", 1, "must return logits"),
        ("make_one_logit", 1, "1 logit(s) per row"),
        ("make_nan", 1, "non-finite logits for row 0"),
        ("make_bad_prefix", 3, "inside the model's mc_prefix"),
    ],
)
def test_model_protocol_errors(factory: str, k: int, culprit: str) -> None:
    scorer = Scorer(ModelSpec(f"{FIXTURE}:{factory}", mc_samples=k), in_features=6, seed=0)
    with pytest.raises(AlscaleError) as info:
        scorer.score(_features(3, 6))
    assert culprit in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("kwargs", "culprit"), [({"in_features": 0}, "in_features"), ({"seed": -1}, "seed")])
def test_bad_scorer_arguments(kwargs: dict, culprit: str) -> None:
    args = {"in_features": 6, "seed": 0, **kwargs}
    with pytest.raises(AlscaleError, match=culprit):
        Scorer(ModelSpec("linear", {"num_classes": 3}), **args)
