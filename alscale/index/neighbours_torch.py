"""The torch candidate pass of exact neighbour search, for GPUs FAISS cannot use (e.g.
Hopper with the PyPI ``faiss-gpu-cu12`` wheel). Same contract as the FAISS and numpy
passes of :mod:`alscale.index.neighbours`: float32 approximate squared distances, from
which only bounds are taken; rows stay resident on the device between calls.
"""

from __future__ import annotations

import numpy as np

_ROWS = 1 << 16


class TorchCandidates:
    """Blocked ``‖q‖² + ‖x‖² − 2 q·x`` on ``device`` with ``torch.topk`` / a threshold."""

    def __init__(self, x_N_D: np.ndarray, device: str = "cuda") -> None:
        import torch

        self._torch = torch
        self.device = device
        self.x = torch.from_numpy(np.ascontiguousarray(x_N_D, dtype=np.float32)).to(device)
        self.x_sq = (self.x * self.x).sum(1)

    def _blocks(self, q: np.ndarray):
        t = self._torch
        qt = t.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)
        q_sq = (qt * qt).sum(1)
        for r0 in range(0, self.x.shape[0], _ROWS):
            xb = self.x[r0:r0 + _ROWS]
            yield r0, q_sq[:, None] + self.x_sq[None, r0:r0 + _ROWS] - 2.0 * (qt @ xb.T)

    def topk(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        t = self._torch
        best_v = best_i = None
        for r0, approx in self._blocks(q):
            kb = min(kk, approx.shape[1])
            v, i = t.topk(approx, kb, dim=1, largest=False)
            i = i + r0
            if best_v is not None:
                v, i = t.cat([best_v, v], 1), t.cat([best_i, i], 1)
                v, o = t.topk(v, min(kk, v.shape[1]), dim=1, largest=False)
                i = t.gather(i, 1, o)
            best_v, best_i = v, i
        v, o = t.sort(best_v, dim=1)
        return v.cpu().numpy(), t.gather(best_i, 1, o).cpu().numpy().astype(np.int64)

    def range(self, q: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
        qi_all, xi_all = [], []
        for r0, approx in self._blocks(q):
            nz = (approx <= limit).nonzero()
            qi_all.append(nz[:, 0].cpu().numpy())
            xi_all.append(nz[:, 1].cpu().numpy() + r0)
        return np.concatenate(qi_all).astype(np.int64), np.concatenate(xi_all).astype(np.int64)
