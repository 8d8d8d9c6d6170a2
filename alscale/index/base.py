"""The distance-backend protocol and the rigorous error bound every backend is held to.

A backend computes squared Euclidean distances between float32 rows and a set of centers
the fast way, ``‖x‖² + ‖c‖² − 2 x·c`` with a matrix product and cached ``‖x‖²``, chunked
over rows and centers so that memory stays bounded (never an N×M matrix for large N, M).

Float results of such a product depend on the BLAS kernel, which may pick a different
summation order for a different matrix shape or even a different position of a row in
the matrix (measured here: OpenBLAS, used by numpy and faiss-cpu, changes ~15 % of the
products when a row moves by a few positions; MKL, used by torch on the CPU, does not for
blocks of at least 16 rows and 16 centers). So a backend's value for one row is *not* a
function of that row alone. Exact selection loops therefore never compare backend values
directly: they use them only as bounds, ``|approx − exact| <= error_bound(...)``, and
decide with the canonical float64 distance of :mod:`alscale.index.exact`, which is a
function of the two vectors only. That makes a selection independent of the backend, the
shard count, the executor and the hardware.

The bound (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1):
with unit roundoff ``u`` of the accumulation, ``γ_D = D u / (1 − D u)`` and inputs
rounded to the compute type with relative error ``u_in``, each of ``x·c``, ``‖x‖²``,
``‖c‖²`` is off by at most ``g (‖x‖ ‖c‖ or ‖x‖²)`` with
``g = γ_D (1 + u_in)² + 2 u_in + u_in²``; the three additions that combine them add at
most ``3 u`` of a quantity bounded by ``(‖x‖ + ‖c‖)²``. Hence
``|d̃ − ‖x − c‖²| <= (g + 3u) (‖x‖ + ‖c‖)²``; :func:`sq_dist_error_bound` returns twice
that (a safety factor, and room for the canonical float64 value's own ~1e-14 error).
Clamping at 0 only moves a value towards the exact one.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Unit roundoff of float32 (round to nearest).
U32 = 2.0**-24
#: Unit roundoff of float64.
U64 = 2.0**-53


def sq_dist_error_bound(
    x_norm_max: float, c_norm_max: float, dim: int, *, unit: float = U32, input_unit: float = U32
) -> float:
    """Upper bound on ``|approx − exact|`` of one squared distance computed by a backend.

    Args:
        x_norm_max: an upper bound on ``‖x‖`` over the rows.
        c_norm_max: an upper bound on ``‖c‖`` over the centers.
        dim: D, the length of the dot products.
        unit: unit roundoff of the accumulation (float32: 2^-24).
        input_unit: relative rounding of the inputs to the compute type (2^-24 covers a
            float64 center such as a mean rounded to float32; 2^-8 for bfloat16 storage).
    """
    gamma = dim * unit / (1.0 - dim * unit)
    g = gamma * (1.0 + input_unit) ** 2 + 2.0 * input_unit + input_unit**2
    scale = (float(x_norm_max) + float(c_norm_max)) ** 2
    return 2.0 * (g + 3.0 * unit + (dim + 4) * U64) * scale + 1e-300


def norm_upper_bound(sq_norm_max: float, dim: int, unit: float = U32) -> float:
    """An upper bound on ``‖x‖`` from a computed ``‖x‖²`` (which may be low by ``γ_D``)."""
    gamma = dim * unit / (1.0 - dim * unit)
    return math.sqrt(max(float(sq_norm_max), 0.0) / (1.0 - gamma)) * (1.0 + 4.0 * unit)


@runtime_checkable
class DistanceBackend(Protocol):
    """Squared Euclidean distances of rows to a set of centers, chunked, on one device.

    Arrays in and out are numpy arrays or the backend's *native* arrays (``asarray``):
    numpy for ``numpy`` and ``faiss``, torch tensors on the backend's device for
    ``torch``. Native arrays avoid copies (rows stay resident on a GPU between calls).

    Attributes:
        name: ``"numpy"``, ``"torch"`` or ``"faiss"``.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    name: str
    device: str

    def asarray(self, x_N_D: Any) -> Any:
        """``x`` as a contiguous float32 native array (no copy when it already is one)."""
        ...

    def to_numpy(self, a: Any) -> np.ndarray:
        """A native array as numpy (no copy for CPU arrays)."""
        ...

    def sq_norms(self, x_N_D: Any) -> Any:
        """``‖x_i‖²`` per row (float32, native), to cache and pass as ``x_sq_N``."""
        ...

    def min_sq_dist_update(
        self, x_N_D: Any, centers_M_D: Any, mind_N: Any, *, x_sq_N: Any | None = None
    ) -> Any:
        """``mind_N = min(mind_N, min_j ‖x_i − c_j‖²)``, clamped at 0; returns ``mind_N``.

        Updated in place when ``mind_N`` is a native float32 array of this backend
        (``-inf`` entries stay ``-inf``: a way to mark rows as excluded).
        """
        ...

    def nearest_sq_dist(self, x_N_D: Any, ref_M_D: Any, *, x_sq_N: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact (brute-force) 1-NN: ``(d2_N, idx_N)`` numpy float32 / int64.

        ``d2`` is within :meth:`error_bound` of the true minimum; ``idx`` is a reference
        row attaining the computed minimum (among near-ties, any of them).
        """
        ...

    def error_bound(self, x_norm_max: float, c_norm_max: float, dim: int) -> float:
        """Bound on ``|computed − exact|`` of one squared distance (see the module doc)."""
        ...


def block_rows(n_centers: int, target_bytes: int = 1 << 21) -> int:
    """Rows per block so that one ``rows × centers`` float32 block is about ``target_bytes``."""
    return int(max(256, min(1 << 16, target_bytes // (4 * max(1, n_centers)))))
