"""Nearest-center distance backends behind one small protocol (DESIGN §2 ``index/``).

Two operations, chunked over rows and centers with bounded memory:

- ``min_sq_dist_update(x_N_D, centers_M_D, mind_N)``: ``mind = min(mind, min_j ‖x − c_j‖²)``
  (the k-center / k-means++ inner step), and
- ``nearest_sq_dist(x_N_D, ref_M_D) -> (d2_N, idx_N)``: exact brute-force 1-NN (e.g. the
  distance of every pool row to a labelled set),

implemented by ``numpy`` (the reference), ``torch`` (CPU or CUDA) and ``faiss`` (CPU, or a
GPU the installed wheel supports). Each backend's values are within
:meth:`DistanceBackend.error_bound` of the exact distances; exact selection loops decide
with the canonical float64 distances of :mod:`alscale.index.exact` (see
:mod:`alscale.index.base` for why).

``get_backend("auto")`` picks torch on CUDA when there is a GPU, else numpy: on this
2-core CPU numpy was the fastest for the k-center loop as it runs (lazy updates: one pass
over all rows with a few centers, then catch-up products of a few thousand rows): exact
k-center, N = 1M, D = 128, B = 1,000, two in-process shards, with other jobs loading the
machine: numpy 2.2 s, torch (MKL) 3.2-3.6 s, faiss 10-17 s (L = 0); numpy 3.4-4.0 s, torch
5.0 s, faiss 7.5 s (L = 500 labelled). For one large eager update (1M × 128 rows against
256 centers, quiet machine) torch/MKL is faster (~110 vs ~90 GFLOP/s), and faiss is
slower (it has no batched-update primitive: ``knn`` recomputes norms and keeps a heap).

Only ``alscale/index/faiss_*.py`` imports faiss, and torch is imported only when a torch
backend is built: ``import alscale.index`` needs numpy alone.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from typing import Any

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.index.base import DistanceBackend, norm_upper_bound, sq_dist_error_bound
from alscale.index.exact import canonical_min_sq_dist, sq_dist_rows, sq_dist_to_point
from alscale.index.numpy_backend import NumpyBackend

__all__ = [
    "BACKENDS",
    "DistanceBackend",
    "NumpyBackend",
    "canonical_min_sq_dist",
    "cuda_device",
    "get_backend",
    "min_sq_dist_update",
    "nearest_sq_dist",
    "norm_upper_bound",
    "sq_dist_error_bound",
    "sq_dist_rows",
    "sq_dist_to_point",
]

logger = logging.getLogger(__name__)

#: Accepted backend names.
BACKENDS = ("auto", "numpy", "torch", "faiss")

_CACHE: dict[tuple[str, str | None], DistanceBackend] = {}


def cuda_device() -> str | None:
    """``"cuda"`` when torch can use a GPU here. Without an NVIDIA device (or with
    ``CUDA_VISIBLE_DEVICES`` empty, as Ray sets it for CPU actors) torch is not imported:
    that import alone takes seconds."""
    if "torch" not in sys.modules and (
        os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or not glob.glob("/dev/nvidia[0-9]*")
    ):
        return None
    try:
        import torch
    except ImportError:
        return None
    try:
        return "cuda" if torch.cuda.is_available() else None
    except Exception:  # a broken CUDA install: stay on the CPU
        return None


def _torch_backend(device: str) -> DistanceBackend | None:
    try:
        from alscale.index.torch_backend import TorchBackend

        return TorchBackend(device)
    except ImportError:
        return None


def get_backend(name: str = "auto", device: str | None = None) -> DistanceBackend:
    """The distance backend ``name`` (``auto``, ``numpy``, ``torch``, ``faiss``).

    Args:
        name: ``auto`` — torch on CUDA if there is a GPU, else numpy (fastest here on the
            CPU, see the module doc); ``torch`` — on ``device`` or CUDA when available, else CPU;
            ``faiss`` — on a GPU when the installed wheel supports it, else on torch/CUDA
            when there is a GPU faiss cannot use, else faiss on the CPU.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; None chooses as above.

    Raises:
        AlscaleError: unknown name, or the backend's package is not installed.
    """
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise AlscaleError(f"unknown distance backend {short_repr(name)}; valid: {', '.join(BACKENDS)}")
    key = (name.strip().lower(), device)
    if key not in _CACHE:
        _CACHE[key] = _build(key[0], device)
        logger.debug("distance backend %s -> %r", name, _CACHE[key])
    return _CACHE[key]


def _build(name: str, device: str | None) -> DistanceBackend:
    if device is not None and device != "cpu" and not device.startswith("cuda"):
        raise AlscaleError(f"device must be cpu, cuda or cuda:N; got {short_repr(device)}")
    if name == "numpy":
        if device not in (None, "cpu"):
            raise AlscaleError(f"the numpy backend runs on the CPU only; got device {short_repr(device)}")
        return NumpyBackend()
    cuda = device if device is not None and device.startswith("cuda") else (None if device == "cpu" else cuda_device())
    if name == "auto":
        backend = _torch_backend(cuda) if cuda is not None else None
        return backend if backend is not None else NumpyBackend()
    if name == "torch":
        backend = _torch_backend(cuda or "cpu")
        if backend is None:
            raise AlscaleError("distance backend torch needs PyTorch; install torch or use backend numpy")
        return backend
    # faiss
    try:
        from alscale.index.faiss_backend import FaissBackend, faiss_gpu_usable, import_faiss

        import_faiss()
    except ImportError:
        raise AlscaleError(
            "distance backend faiss needs faiss; pip install 'alscale[cpu]' (faiss-cpu) or use backend torch"
        ) from None
    if cuda is not None:
        index = int(cuda.partition(":")[2] or 0)
        if faiss_gpu_usable(index):
            return FaissBackend(f"cuda:{index}")
        fallback = _torch_backend(cuda)
        if fallback is not None:
            logger.info("faiss cannot search on %s (no code for this GPU in the wheel); using torch there", cuda)
            return fallback
    return FaissBackend("cpu")


def _check_rows(name: str, a: Any, dim: int | None = None) -> np.ndarray:
    from alscale.validation import check_finite

    arr = np.asarray(a)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise AlscaleError(f"{name} must be a floating [N, D] array; got {arr.dtype} of shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise AlscaleError(f"{name} has D = {arr.shape[1]} but x has D = {dim}; they must match")
    check_finite(arr, name)
    return arr


def min_sq_dist_update(
    x_N_D: Any, centers_M_D: Any, mind_N: Any | None = None, *, backend: str | DistanceBackend = "auto"
) -> np.ndarray:
    """``min(mind_N, min_j ‖x_i − c_j‖²)`` per row (a new float32 array; ``mind`` = +inf if None).

    A validating wrapper around :meth:`DistanceBackend.min_sq_dist_update` for numpy input;
    values are within the backend's ``error_bound`` of the exact distances.
    """
    x = _check_rows("x", x_N_D)
    c = _check_rows("centers", centers_M_D, x.shape[1])
    mind = np.full(x.shape[0], np.inf, np.float32) if mind_N is None else np.array(mind_N, dtype=np.float32)
    if mind.shape != (x.shape[0],):
        raise AlscaleError(f"mind must have shape ({x.shape[0]},); got {mind.shape}")
    be = get_backend(backend) if isinstance(backend, str) else backend
    return np.asarray(be.to_numpy(be.min_sq_dist_update(x, c, mind)))


def nearest_sq_dist(
    x_N_D: Any, ref_M_D: Any, *, backend: str | DistanceBackend = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1-NN of every row of ``x`` in ``ref``: ``(d2_N float32, idx_N int64)``.

    A validating wrapper around :meth:`DistanceBackend.nearest_sq_dist`.
    """
    x = _check_rows("x", x_N_D)
    ref = _check_rows("ref", ref_M_D, x.shape[1])
    if ref.shape[0] == 0:
        raise AlscaleError("ref is empty; nearest_sq_dist needs at least one reference row")
    be = get_backend(backend) if isinstance(backend, str) else backend
    return be.nearest_sq_dist(x, ref)
