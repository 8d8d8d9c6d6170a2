"""The torch distance backend, on the CPU (MKL) or a CUDA device: blocked float32 products.

Same arithmetic as the numpy backend (``‖x‖² − max_j (2 x·c_j − ‖c_j‖²)``, clamped at 0),
with the rows resident on the device. torch is imported when a backend is built, never at
module import (``alscale.strategies`` must import without torch).

TF32: when torch is set to use TF32 or bfloat16 passes for float32 products
(``torch.set_float32_matmul_precision("high"/"medium")`` or
``torch.backends.cuda.matmul.allow_tf32``), the error bound widens accordingly.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from alscale.index.base import U32, sq_dist_error_bound

#: Centers per matrix-product block, and the target size of one rows × centers block.
CENTER_BLOCK_CPU, BLOCK_BYTES_CPU = 256, 1 << 23
CENTER_BLOCK_CUDA, BLOCK_BYTES_CUDA = 2048, 1 << 28
#: On the CPU, updates with fewer multiply-adds than this run in numpy on one BLAS thread:
#: torch's thread pool costs milliseconds per small call when the cores are busy (measured:
#: 27 ms vs 0.13 ms for 500 rows x 16 centers on 2 loaded cores).
SMALL_WORK_CPU = 1 << 25


class TorchBackend:
    """Blocked float32 products with torch on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``)."""

    name = "torch"

    def __init__(self, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self._device = torch.device(device)
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch backend: CUDA requested but not available")
        self.device = str(self._device)
        cuda = self._device.type == "cuda"
        self._center_block = CENTER_BLOCK_CUDA if cuda else CENTER_BLOCK_CPU
        self._block_bytes = BLOCK_BYTES_CUDA if cuda else BLOCK_BYTES_CPU

    def __repr__(self) -> str:
        return f"TorchBackend(device={self.device!r})"

    # -- conversions ---------------------------------------------------------------------
    def asarray(self, x_N_D: Any) -> Any:
        torch = self._torch
        if isinstance(x_N_D, torch.Tensor):
            t = x_N_D
        else:
            a = np.asarray(x_N_D)
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                a = np.ascontiguousarray(a, dtype=np.float32)
            with warnings.catch_warnings():  # read-only (memory-mapped) arrays: never written
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(a)
        return t.to(device=self._device, dtype=torch.float32).contiguous()

    def to_numpy(self, a: Any) -> np.ndarray:
        if isinstance(a, self._torch.Tensor):
            return a.detach().cpu().numpy()
        return np.asarray(a)

    # -- kernels -------------------------------------------------------------------------
    def _rows_per_block(self, n_centers: int) -> int:
        return int(max(256, min(1 << 20, self._block_bytes // (4 * max(1, n_centers)))))

    def sq_norms(self, x_N_D: Any) -> Any:
        torch = self._torch
        x = self.asarray(x_N_D)
        if self._device.type == "cpu" and x.dim() == 2:  # one numpy pass, no thread pool
            out_np = np.empty(x.shape[0], dtype=np.float32)
            x_np = x.numpy()
            for r0 in range(0, x.shape[0], 65536):
                xb = x_np[r0 : r0 + 65536]
                np.einsum("ij,ij->i", xb, xb, out=out_np[r0 : r0 + 65536])
            return torch.from_numpy(out_np)
        out = torch.empty(x.shape[0], dtype=torch.float32, device=self._device)
        step = self._rows_per_block(x.shape[1] if x.dim() == 2 else 1)
        with torch.inference_mode():
            for r0 in range(0, x.shape[0], step):
                xb = x[r0 : r0 + step]
                out[r0 : r0 + step] = torch.linalg.vecdot(xb, xb, dim=-1) if x.dim() == 2 else xb * xb
        return out

    def _center_blocks(self, c: Any) -> list[tuple[Any, Any]]:
        c_sq = self.sq_norms(c)
        return [
            ((2.0 * c[j0 : j0 + self._center_block]).T.contiguous(), c_sq[j0 : j0 + self._center_block])
            for j0 in range(0, c.shape[0], self._center_block)
        ]

    def _mind_native(self, mind_N: Any) -> tuple[Any, bool]:
        """A float32 tensor view of ``mind_N`` on the device, and whether it aliases it."""
        torch = self._torch
        if isinstance(mind_N, torch.Tensor):
            ok = mind_N.dtype == torch.float32 and mind_N.device == self._device and mind_N.is_contiguous()
            return (mind_N, True) if ok else (mind_N.to(self._device, torch.float32).contiguous(), False)
        a = np.asarray(mind_N)
        if self._device.type == "cpu" and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable:
            return torch.from_numpy(a), True
        return torch.tensor(np.asarray(a, dtype=np.float32), device=self._device), False

    def min_sq_dist_update(
        self, x_N_D: Any, centers_M_D: Any, mind_N: Any, *, x_sq_N: Any | None = None
    ) -> Any:
        torch = self._torch
        mind, aliased = self._mind_native(mind_N)
        x = self.asarray(x_N_D)
        c = self.asarray(centers_M_D)
        if self._device.type == "cpu" and x.shape[0] * c.shape[0] * max(1, x.shape[-1]) <= SMALL_WORK_CPU:
            from alscale.index.numpy_backend import NumpyBackend

            NumpyBackend().min_sq_dist_update(
                x.numpy(), c.numpy(), mind.numpy(), x_sq_N=None if x_sq_N is None else self.to_numpy(x_sq_N)
            )
        elif x.shape[0] and c.shape[0]:
            x_sq = self.sq_norms(x) if x_sq_N is None else self.asarray(x_sq_N)
            with torch.inference_mode():
                blocks = self._center_blocks(c)
                step = self._rows_per_block(min(c.shape[0], self._center_block))
                # One product buffer per block width: no allocation (and page faults) per block.
                bufs = {int(c2t.shape[1]): torch.empty((step, c2t.shape[1]), device=self._device) for c2t, _ in blocks}
                for r0 in range(0, x.shape[0], step):
                    xb = x[r0 : r0 + step]
                    rows = xb.shape[0]
                    best = None
                    for c2t, c_sq in blocks:
                        g = bufs[int(c2t.shape[1])][:rows]
                        torch.mm(xb, c2t, out=g)
                        g.sub_(c_sq)
                        m = g.amax(dim=1)
                        best = m if best is None else torch.maximum(best, m, out=best)
                    d = torch.sub(x_sq[r0 : r0 + step], best, out=best).clamp_(min=0.0)
                    seg = mind[r0 : r0 + step]
                    torch.minimum(seg, d, out=seg)  # -inf (excluded rows) stays -inf
        if aliased:
            return mind_N
        return mind if isinstance(mind_N, torch.Tensor) else self.to_numpy(mind)

    def nearest_sq_dist(
        self, x_N_D: Any, ref_M_D: Any, *, x_sq_N: Any | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        x = self.asarray(x_N_D)
        c = self.asarray(ref_M_D)
        n = x.shape[0]
        if n == 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        x_sq = self.sq_norms(x) if x_sq_N is None else self.asarray(x_sq_N)
        d2 = torch.empty(n, dtype=torch.float32, device=self._device)
        idx = torch.empty(n, dtype=torch.int64, device=self._device)
        with torch.inference_mode():
            blocks = self._center_blocks(c)
            step = self._rows_per_block(min(c.shape[0], self._center_block))
            for r0 in range(0, n, step):
                xb = x[r0 : r0 + step]
                best = best_idx = None
                for b, (c2t, c_sq) in enumerate(blocks):
                    g = torch.mm(xb, c2t)
                    g.sub_(c_sq)
                    m, j = g.max(dim=1)
                    j = j + b * self._center_block
                    if best is None:
                        best, best_idx = m, j
                    else:
                        better = m > best
                        best = torch.where(better, m, best)
                        best_idx = torch.where(better, j, best_idx)
                d = x_sq[r0 : r0 + step] - best
                d2[r0 : r0 + step] = d.clamp_(min=0.0)
                idx[r0 : r0 + step] = best_idx
        return self.to_numpy(d2), self.to_numpy(idx)

    def error_bound(self, x_norm_max: float, c_norm_max: float, dim: int) -> float:
        return sq_dist_error_bound(x_norm_max, c_norm_max, dim, unit=U32, input_unit=self._input_unit())

    def _input_unit(self) -> float:
        torch = self._torch
        precision = torch.get_float32_matmul_precision()
        unit = {"highest": U32, "high": 2.0**-11, "medium": 2.0**-8}.get(precision, 2.0**-8)
        if self._device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
            unit = max(unit, 2.0**-11)
        return unit
