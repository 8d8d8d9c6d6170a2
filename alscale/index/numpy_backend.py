"""The numpy distance backend (the reference): blocked float32 matrix products (BLAS).

Small products run on one BLAS thread (see :mod:`alscale.index.blas`).

``min_j ‖x − c_j‖² = ‖x‖² − max_j (2 x·c_j − ‖c_j‖²)``: one product per block of rows and
centers, a subtraction and a row-wise max; the centers are pre-scaled by 2 (exact in
floating point). Memory: one ``rows × centers`` block (about 2 MiB) at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alscale.index.base import U32, block_rows, sq_dist_error_bound
from alscale.index.blas import threads_for

#: Centers per matrix-product block, and the target size of one rows × centers block.
CENTER_BLOCK = 256
BLOCK_BYTES = 1 << 23


class HostFloat32Arrays:
    """Array handling shared by the backends whose arrays are float32 numpy arrays on the host."""

    def asarray(self, x_N_D: Any) -> np.ndarray:
        return np.ascontiguousarray(x_N_D, dtype=np.float32)

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def sq_norms(self, x_N_D: Any) -> np.ndarray:
        x = self.asarray(x_N_D)
        out = np.empty(x.shape[0], dtype=np.float32)
        step = block_rows(x.shape[1] if x.ndim == 2 else 1)
        for r0 in range(0, x.shape[0], step):
            xb = x[r0 : r0 + step]
            np.einsum("ij,ij->i", xb, xb, out=out[r0 : r0 + step])
        return out

    def error_bound(self, x_norm_max: float, c_norm_max: float, dim: int) -> float:
        return sq_dist_error_bound(x_norm_max, c_norm_max, dim, unit=U32, input_unit=U32)

    def _update_inputs(self, x_N_D: Any, centers_M_D: Any, mind_N: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``min_sq_dist_update``'s arguments as host float32 (``mind_N`` updated in place when it already is)."""
        mind = mind_N if is_f32_vector(mind_N) else np.array(mind_N, dtype=np.float32)
        return self.asarray(x_N_D), self.asarray(centers_M_D), mind


class NumpyBackend(HostFloat32Arrays):
    """Blocked float32 BLAS on the CPU (numpy's BLAS, OpenBLAS in the wheels)."""

    name = "numpy"
    device = "cpu"

    def __repr__(self) -> str:
        return "NumpyBackend()"

    def _center_blocks(self, centers_M_D: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        c_sq = self.sq_norms(centers_M_D)
        blocks = []
        for j0 in range(0, centers_M_D.shape[0], CENTER_BLOCK):
            c = centers_M_D[j0 : j0 + CENTER_BLOCK]
            blocks.append((np.ascontiguousarray((2.0 * c).T), c_sq[j0 : j0 + CENTER_BLOCK]))
        return blocks

    def min_sq_dist_update(
        self, x_N_D: Any, centers_M_D: Any, mind_N: Any, *, x_sq_N: Any | None = None
    ) -> np.ndarray:
        x, c, mind = self._update_inputs(x_N_D, centers_M_D, mind_N)
        if x.shape[0] == 0 or c.shape[0] == 0:
            return mind
        x_sq = self.sq_norms(x) if x_sq_N is None else np.asarray(x_sq_N, dtype=np.float32)
        blocks = self._center_blocks(c)
        step = block_rows(min(c.shape[0], CENTER_BLOCK), BLOCK_BYTES)
        bufs = {c2t.shape[1]: np.empty((step, c2t.shape[1]), dtype=np.float32) for c2t, _ in blocks}
        best = np.empty(step, dtype=np.float32)
        m = np.empty(step, dtype=np.float32)
        for r0 in range(0, x.shape[0], step):
            xb = x[r0 : r0 + step]
            rows = xb.shape[0]
            for b, (c2t, c_sq) in enumerate(blocks):
                g = bufs[c2t.shape[1]][:rows]
                with threads_for(rows * c2t.shape[0] * c2t.shape[1]):
                    np.matmul(xb, c2t, out=g)
                g -= c_sq
                g.max(axis=1, out=m[:rows] if b else best[:rows])
                if b:
                    np.maximum(best[:rows], m[:rows], out=best[:rows])
            np.subtract(x_sq[r0 : r0 + rows], best[:rows], out=m[:rows])
            np.maximum(m[:rows], 0.0, out=m[:rows])  # clamp the new distances; -inf in mind stays
            np.minimum(mind[r0 : r0 + rows], m[:rows], out=mind[r0 : r0 + rows])
        return mind

    def nearest_sq_dist(
        self, x_N_D: Any, ref_M_D: Any, *, x_sq_N: Any | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        x = self.asarray(x_N_D)
        c = self.asarray(ref_M_D)
        n = x.shape[0]
        d2 = np.empty(n, dtype=np.float32)
        idx = np.zeros(n, dtype=np.int64)
        if n == 0:
            return d2, idx
        x_sq = self.sq_norms(x) if x_sq_N is None else np.asarray(x_sq_N, dtype=np.float32)
        blocks = self._center_blocks(c)
        step = block_rows(min(c.shape[0], CENTER_BLOCK))
        for r0 in range(0, n, step):
            xb = x[r0 : r0 + step]
            rows = np.arange(xb.shape[0])
            best = np.full(xb.shape[0], -np.inf, dtype=np.float32)
            best_idx = np.zeros(xb.shape[0], dtype=np.int64)
            for b, (c2t, c_sq) in enumerate(blocks):
                with threads_for(xb.shape[0] * c2t.shape[0] * c2t.shape[1]):
                    g = xb @ c2t
                g -= c_sq
                j = g.argmax(axis=1)
                m = g[rows, j]
                better = m > best  # strict: an earlier block keeps a tie
                best[better] = m[better]
                best_idx[better] = j[better] + b * CENTER_BLOCK
            d = x_sq[r0 : r0 + step] - best
            np.maximum(d, 0.0, out=d)
            d2[r0 : r0 + step] = d
            idx[r0 : r0 + step] = best_idx
        return d2, idx

def is_f32_vector(a: Any) -> bool:
    """Whether ``a`` can be updated in place as a float32 min-distance vector."""
    return (
        isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 1 and a.flags.c_contiguous
        and a.flags.writeable
    )
