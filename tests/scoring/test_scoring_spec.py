"""ModelSpec validation and pickling, device resolution, and the package's import rule."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alscale.errors import AlscaleError
from alscale.scoring import ModelSpec, resolve_device

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_frozen_kwargs() -> None:
    spec = ModelSpec("mlp")
    assert (spec.kwargs, spec.checkpoint, spec.mc_samples, spec.batch_size, spec.device) == ({}, None, 1, 4096, "auto")
    source = {"num_classes": 10}
    spec = ModelSpec("mlp", source)
    source["num_classes"] = 3  # the spec keeps its own copy
    assert spec.kwargs["num_classes"] == 10
    with pytest.raises(TypeError):
        spec.kwargs["num_classes"] = 5  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.mc_samples = 3  # type: ignore[misc]


def test_pickle_round_trip() -> None:
    spec = ModelSpec("mlp", {"num_classes": 10, "hidden": 32}, checkpoint=Path("/tmp/x.pt"), mc_samples=7,
                     batch_size=9, device="cpu")
    assert spec.checkpoint == "/tmp/x.pt"
    clone = pickle.loads(pickle.dumps(spec))
    assert clone == spec
    assert dict(clone.kwargs) == {"num_classes": 10, "hidden": 32}


@pytest.mark.parametrize(
    ("field", "value", "culprit"),
    [
        ("factory", "", "factory"),
        ("kwargs", [1, 2], "kwargs"),
        ("mc_samples", 0, "mc_samples"),
        ("mc_samples", True, "mc_samples"),
        ("batch_size", -4, "batch_size"),
        ("batch_size", 2.5, "batch_size"),
        ("device", "tpu", "device"),
        ("device", "cuda:x", "device"),
        ("checkpoint", 3, "checkpoint"),
    ],
)
def test_invalid_fields(field: str, value: object, culprit: str) -> None:
    kwargs = {"factory": "mlp", field: value}
    with pytest.raises(AlscaleError, match=culprit) as info:
        ModelSpec(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_kwargs_keys_must_be_strings() -> None:
    with pytest.raises(AlscaleError, match="keys must be strings"):
        ModelSpec("mlp", {1: 2})  # type: ignore[dict-item]


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(AlscaleError, match="'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_names_the_fix(device: str) -> None:
    with pytest.raises(AlscaleError) as info:
        resolve_device(device)
    message = str(info.value)
    assert f"'{device}'" in message and "CUDA is not available" in message and "'cpu'" in message
    assert "\n" not in message


def test_scoring_imports_no_ray_faiss_pyarrow() -> None:
    code = (
        "import sys\n"
        "for name in ('ray', 'faiss', 'pyarrow'):\n"
        "    sys.modules[name] = None\n"
        "import alscale.scoring, alscale.scoring.scorer\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'faiss', 'pyarrow') and sys.modules[m]]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
