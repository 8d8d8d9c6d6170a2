"""Device resolution, done inside the process that scores (a Ray actor sees only its GPUs)."""

from __future__ import annotations

import os

import torch

from alscale.errors import AlscaleError
from alscale.scoring.spec import DEVICE_PATTERN


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return f"no GPU is visible to this process (CUDA_VISIBLE_DEVICES={visible!r}; give the worker GPUs)"
    return "no GPU is visible to this process"


def resolve_device(device: str) -> torch.device:
    """Turn a ``ModelSpec.device`` string into a ``torch.device`` available here.

    ``"auto"`` is CUDA device 0 when CUDA is available, else the CPU. ``"cuda"`` or
    ``"cuda:N"`` without CUDA (or without device N) raise :class:`AlscaleError` with the fix.
    """
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise AlscaleError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise AlscaleError(
            f"device {device!r} requested but CUDA is not available: {_no_cuda_reason()};"
            " set device to 'auto' (falls back to the CPU) or 'cpu'"
        )
    resolved = torch.device(device)
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise AlscaleError(
            f"device {device!r} requested but only {count} CUDA device(s) are visible"
            f" (cuda:0..cuda:{count - 1}); use 'cuda' or 'auto'"
        )
    return resolved
