"""The faiss distance backend: exact brute-force search (``faiss.knn`` / ``faiss.knn_gpu``).

The only module that imports ``faiss`` (lazily, when a backend is built). faiss computes
``‖x‖² + ‖c‖² − 2 x·c`` with its own BLAS in blocks of 4096 × 1024 and keeps the minimum
in C++, so it needs no cached ``‖x‖²`` (``x_sq_N`` is accepted and ignored).

GPU: the PyPI ``faiss-gpu-cu12`` wheel ships code for compute capability 7.0–8.9 only (no
Hopper); :func:`faiss_gpu_usable` tries a tiny search on the device and the backend
resolver falls back to torch on CUDA when it fails.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from alscale.index.numpy_backend import HostFloat32Arrays

logger = logging.getLogger(__name__)


def import_faiss() -> Any:
    """``faiss``, or ImportError."""
    import faiss

    return faiss


def faiss_gpu_usable(device_index: int = 0) -> bool:
    """Whether the installed faiss can search on CUDA device ``device_index``."""
    try:
        faiss = import_faiss()
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() <= device_index:
            return False
        res = faiss.StandardGpuResources()
        x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
        d, _ = faiss.knn_gpu(res, x, x, 1, device=device_index)
        return bool(np.all(np.isfinite(d)))
    except Exception as exc:  # a wheel without code for this device raises at run time
        logger.info("faiss GPU search unavailable on device %d: %s", device_index, exc)
        return False


class FaissBackend(HostFloat32Arrays):
    """Exact search with faiss on the CPU or (``device="cuda:N"``) a supported GPU."""

    name = "faiss"

    def __init__(self, device: str = "cpu") -> None:
        self._faiss = import_faiss()
        self.device = device
        self._gpu_index: int | None = None
        self._res: Any = None
        if device.startswith("cuda"):
            self._gpu_index = int(device.partition(":")[2] or 0)
            if not faiss_gpu_usable(self._gpu_index):
                raise RuntimeError(f"faiss backend: this faiss build cannot search on {device}")
            self._res = self._faiss.StandardGpuResources()

    def __repr__(self) -> str:
        return f"FaissBackend(device={self.device!r})"

    def _knn1(self, x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._res is not None:
            d, i = self._faiss.knn_gpu(self._res, x, c, 1, device=self._gpu_index)
        else:
            d, i = self._faiss.knn(x, c, 1)
        return d[:, 0], i[:, 0].astype(np.int64)

    def min_sq_dist_update(
        self, x_N_D: Any, centers_M_D: Any, mind_N: Any, *, x_sq_N: Any | None = None
    ) -> np.ndarray:
        x, c, mind = self._update_inputs(x_N_D, centers_M_D, mind_N)
        if x.shape[0] == 0 or c.shape[0] == 0:
            return mind
        d, _ = self._knn1(x, c)
        np.maximum(d, 0.0, out=d)
        np.minimum(mind, d, out=mind)
        return mind

    def nearest_sq_dist(
        self, x_N_D: Any, ref_M_D: Any, *, x_sq_N: Any | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        x = self.asarray(x_N_D)
        if x.shape[0] == 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        d, i = self._knn1(x, self.asarray(ref_M_D))
        return np.maximum(d, 0.0), i
