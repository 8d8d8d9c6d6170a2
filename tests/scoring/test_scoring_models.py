"""build_model: builtins, the BatchBALD MNIST CNN architecture, import-path factories, checkpoints, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from alscale.errors import AlscaleError
from alscale.scoring import ConsistentMCDropout, ConsistentMCDropout2d, ModelSpec, Scorer, build_model, builtin_models

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = "tests.scoring.factory_fixture"


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT))  # the fixture factories import as tests.scoring...


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _one_line_error(spec: ModelSpec, in_features: int = 6) -> str:
    with pytest.raises(AlscaleError) as info:
        build_model(spec, in_features=in_features)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_builtin_names() -> None:
    assert builtin_models() == ["gal_cnn", "linear", "mlp", "mnist_cnn"]


@pytest.mark.parametrize(
    ("factory", "kwargs", "in_features", "n_classes", "embedding_dim"),
    [
        ("linear", {"num_classes": 5}, 12, 5, 12),
        ("mlp", {"num_classes": 10}, 64, 10, 256),
        ("mlp", {"num_classes": 3, "hidden": 16, "depth": 3, "dropout": 0.1}, 7, 3, 16),
        ("mnist_cnn", {}, 784, 10, 128),
        ("gal_cnn", {}, 784, 10, 128),
    ],
)
def test_builtins_build_and_return_logits_and_embedding(
    factory: str, kwargs: dict, in_features: int, n_classes: int, embedding_dim: int
) -> None:
    model = build_model(ModelSpec(factory, kwargs), in_features=in_features)
    assert not model.training
    with torch.no_grad():
        logits, embedding = model(torch.randn(5, in_features))
    assert logits.shape == (5, n_classes) and embedding.shape == (5, embedding_dim)


def test_mlp_architecture() -> None:
    model = build_model(ModelSpec("mlp", {"num_classes": 10, "hidden": 32, "depth": 2, "dropout": 0.3}), in_features=64)
    expected = (64 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10)
    assert _params(model) == expected
    drops = [m for m in model.modules() if isinstance(m, ConsistentMCDropout)]
    assert [d.p for d in drops] == [0.3, 0.3]


def test_mnist_cnn_is_the_batchbald_architecture() -> None:
    model = build_model(ModelSpec("mnist_cnn"), in_features=784)
    # conv1 1->32 5x5; conv2 32->64 5x5; fc1 1024->128; fc2 128->10 (weights + biases).
    expected = (1 * 32 * 5 * 5 + 32) + (32 * 64 * 5 * 5 + 64) + (1024 * 128 + 128) + (128 * 10 + 10)
    assert expected == 184_586
    assert _params(model) == expected
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "conv1.weight": (32, 1, 5, 5), "conv1.bias": (32,),
        "conv2.weight": (64, 32, 5, 5), "conv2.bias": (64,),
        "fc1.weight": (128, 1024), "fc1.bias": (128,),
        "fc2.weight": (10, 128), "fc2.bias": (10,),
    }
    # Dropout after each conv (channel-wise) and after fc1 (element-wise), p = 0.5.
    drops = [(type(m), m.p) for m in model.modules() if isinstance(m, (ConsistentMCDropout, ConsistentMCDropout2d))]
    assert drops == [(ConsistentMCDropout2d, 0.5), (ConsistentMCDropout2d, 0.5), (ConsistentMCDropout, 0.5)]
    # Order inside forward: conv -> dropout -> maxpool -> relu, twice; fc1 -> dropout -> relu -> fc2.
    calls: list[str] = []
    for name, module in model.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    with torch.no_grad():
        model(torch.rand(2, 784))
    assert calls == ["conv1", "conv1_drop", "pool", "relu", "conv2", "conv2_drop", "pool", "relu",
                     "fc1", "fc1_drop", "relu", "fc2"]
    assert _params(build_model(ModelSpec("mnist_cnn", {"num_classes": 4}), in_features=784)) == expected - 6 * 129


def test_gal_cnn_is_the_gal_2017_architecture() -> None:
    model = build_model(ModelSpec("gal_cnn"), in_features=784)
    # conv 1->32 4x4; conv 32->32 4x4; maxpool 2 -> 32 x 11 x 11 = 3872; fc 3872->128; fc 128->10.
    expected = (1 * 32 * 16 + 32) + (32 * 32 * 16 + 32) + (3872 * 128 + 128) + (128 * 10 + 10)
    assert _params(model) == expected
    drops = [m.p for m in model.modules() if isinstance(m, ConsistentMCDropout)]
    assert drops == [0.25, 0.5]
    calls: list[str] = []
    for name, module in model.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    with torch.no_grad():
        model(torch.rand(2, 784))
    assert calls == ["conv1", "relu", "conv2", "relu", "pool", "conv_drop", "fc1", "relu", "fc1_drop", "fc2"]


def test_builtin_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(99)
    before = torch.rand(1)
    torch.manual_seed(99)
    a = build_model(ModelSpec("mlp", {"num_classes": 4}), in_features=8)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = build_model(ModelSpec("mlp", {"num_classes": 4, "init_seed": 0}), in_features=8)
    c = build_model(ModelSpec("mlp", {"num_classes": 4, "init_seed": 1}), in_features=8)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
        if name.endswith("weight"):
            assert not torch.equal(pa, pc), name


def test_import_path_factory() -> None:
    model = build_model(ModelSpec(f"{FIXTURE}:make", {"hidden": 5}), in_features=6)
    assert type(model).__name__ == "TinyNet" and model.fc1.out_features == 5 and not model.training
    scorer = Scorer(ModelSpec(f"{FIXTURE}:make", mc_samples=4), in_features=6, seed=0)
    log_probs, embeddings = scorer.score(np.ones((3, 6), np.float32))
    assert log_probs.shape == (3, 4, 3) and embeddings is not None and embeddings.shape == (3, 8)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    trained = build_model(ModelSpec("mlp", {"num_classes": 10, "init_seed": 5}), in_features=16)
    path = tmp_path / "mlp.pt"
    torch.save(trained.state_dict(), path)
    spec_kwargs = {"num_classes": 10, "init_seed": 0}  # different init: the checkpoint must win
    loaded = build_model(ModelSpec("mlp", spec_kwargs, checkpoint=str(path)), in_features=16)
    for (name, a), b in zip(trained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    x = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    for k in (1, 6):
        from_ckpt = Scorer(ModelSpec("mlp", spec_kwargs, checkpoint=str(path), mc_samples=k), in_features=16, seed=2)
        from_init = Scorer(ModelSpec("mlp", {"num_classes": 10, "init_seed": 5}, mc_samples=k), in_features=16, seed=2)
        fresh = Scorer(ModelSpec("mlp", spec_kwargs, mc_samples=k), in_features=16, seed=2)
        lp_ckpt, emb_ckpt = from_ckpt.score(x)
        lp_init, emb_init = from_init.score(x)
        assert np.array_equal(lp_ckpt, lp_init) and np.array_equal(emb_ckpt, emb_init)
        assert not np.array_equal(lp_ckpt, fresh.score(x)[0])


def test_checkpoint_for_user_factory(tmp_path: Path) -> None:
    model = build_model(ModelSpec(f"{FIXTURE}:make"), in_features=6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    loaded = build_model(ModelSpec(f"{FIXTURE}:make", checkpoint=str(tmp_path / "tiny.pt")), in_features=6)
    assert torch.equal(loaded.fc1.weight, model.fc1.weight)


# --- errors -------------------------------------------------------------------------------------


def test_unknown_builtin_lists_the_valid_names() -> None:
    message = _one_line_error(ModelSpec("resnet"))
    assert "'resnet'" in message and "gal_cnn, linear, mlp, mnist_cnn" in message
    assert "package.module:callable" in message


@pytest.mark.parametrize(
    ("factory", "culprit"),
    [
        ("pkg.mod:", "'pkg.mod:'"),
        (":make", "':make'"),
        ("pkg-x.mod:make", "'pkg-x.mod:make'"),
        ("a:b:c", "'a:b:c'"),
    ],
)
def test_malformed_import_path(factory: str, culprit: str) -> None:
    message = _one_line_error(ModelSpec(factory))
    assert culprit in message and "package.module:callable" in message


def test_missing_module() -> None:
    message = _one_line_error(ModelSpec("no_such_pkg_xyz.models:make"))
    assert "'no_such_pkg_xyz.models'" in message and "package.module:callable" in message


def test_missing_attribute() -> None:
    message = _one_line_error(ModelSpec(f"{FIXTURE}:nope"))
    assert f"'{FIXTURE}'" in message and "'nope'" in message


def test_not_callable() -> None:
    message = _one_line_error(ModelSpec(f"{FIXTURE}:NOT_CALLABLE"))
    assert "not callable" in message and "int" in message


def test_factory_not_returning_a_module() -> None:
    message = _one_line_error(ModelSpec(f"{FIXTURE}:returns_int"))
    assert "returned an object of type int" in message and "torch.nn.Module" in message


def test_factory_that_raises() -> None:
    message = _one_line_error(ModelSpec(f"{FIXTURE}:raises"))
    assert "RuntimeError" in message and "boom second line" in message


def test_factory_with_bad_kwargs() -> None:
    message = _one_line_error(ModelSpec(f"{FIXTURE}:make", {"colour": "red"}))
    assert "TypeError" in message and "colour" in message


def test_builtin_kwarg_errors() -> None:
    assert "'hiden'" in _one_line_error(ModelSpec("mlp", {"num_classes": 3, "hiden": 4}))
    assert "'num_classes'" in _one_line_error(ModelSpec("mlp"))
    assert "in_features=5" in _one_line_error(ModelSpec("linear", {"num_classes": 3, "in_features": 5}))
    assert "784" in _one_line_error(ModelSpec("mnist_cnn"), in_features=100)
    assert "dropout" in _one_line_error(ModelSpec("mlp", {"num_classes": 3, "dropout": 1.5}))
    assert "depth" in _one_line_error(ModelSpec("mlp", {"num_classes": 3, "depth": 0}))
    assert "init_seed" in _one_line_error(ModelSpec("linear", {"num_classes": 3, "init_seed": -1}))


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.pt")
    message = _one_line_error(ModelSpec("linear", {"num_classes": 3}, checkpoint=path))
    assert "not found" in message and path in message


def test_checkpoint_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = build_model(ModelSpec("mlp", {"num_classes": 3}), in_features=6).state_dict()
    partial = {k: v for k, v in state.items() if k != "head.bias"}
    torch.save(partial, tmp_path / "partial.pt")
    message = _one_line_error(ModelSpec("mlp", {"num_classes": 3}, checkpoint=str(tmp_path / "partial.pt")))
    assert "missing key 'head.bias'" in message and "'mlp'" in message
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "dp.pt")
    message = _one_line_error(ModelSpec("mlp", {"num_classes": 3}, checkpoint=str(tmp_path / "dp.pt")))
    assert "unexpected key 'module.body.0.weight'" in message and "'module.' prefix" in message


def test_checkpoint_shape_mismatch_names_the_first_bad_key(tmp_path: Path) -> None:
    state = build_model(ModelSpec("mlp", {"num_classes": 3, "hidden": 8}), in_features=6).state_dict()
    torch.save(state, tmp_path / "h8.pt")
    message = _one_line_error(ModelSpec("mlp", {"num_classes": 3, "hidden": 9}, checkpoint=str(tmp_path / "h8.pt")))
    assert "shape mismatch at 'body.0.weight'" in message and "[8, 6]" in message and "[9, 6]" in message


class _Opaque:
    pass


def test_checkpoint_that_is_not_a_plain_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"fc.weight": torch.zeros(3, 6), "extra": _Opaque()}, path)
    message = _one_line_error(ModelSpec("linear", {"num_classes": 3}, checkpoint=str(path)))
    assert "not a plain state_dict" in message and "weights_only" in message and "_Opaque" in message
    whole = tmp_path / "whole_model.pt"
    torch.save(build_model(ModelSpec("linear", {"num_classes": 3}), in_features=6), whole)
    message = _one_line_error(ModelSpec("linear", {"num_classes": 3}, checkpoint=str(whole)))
    assert "not a plain state_dict" in message and "LinearClassifier" in message


def test_training_checkpoint_with_non_tensor_entries(tmp_path: Path) -> None:
    path = tmp_path / "train.pt"
    torch.save({"fc.weight": torch.zeros(3, 6), "epoch": 3}, path)
    message = _one_line_error(ModelSpec("linear", {"num_classes": 3}, checkpoint=str(path)))
    assert "entry 'epoch'" in message and "state_dict" in message


def test_checkpoint_that_is_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"definitely not a checkpoint")
    message = _one_line_error(ModelSpec("linear", {"num_classes": 3}, checkpoint=str(path)))
    assert "cannot read checkpoint" in message and str(path) in message and "Unsupported operand" in message


def test_fixture_module_is_importable() -> None:
    assert FIXTURE in sys.modules or __import__(FIXTURE)
