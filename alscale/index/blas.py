"""Per-call thread control for numpy's BLAS (OpenBLAS), with no extra dependency.

Small matrix products are faster on one thread: waking BLAS worker threads costs
microseconds on an idle machine and *milliseconds* when the cores are busy (measured here
with other jobs running: 2,116 products of a few hundred rows × 256 centers took 24 s with
OpenBLAS's two threads and 3.2 s with one). :func:`blas_threads` sets OpenBLAS's
thread-local thread count (``openblas_set_num_threads_local``, OpenBLAS >= 0.3.27) around a
block of code; with another BLAS, or when the symbol cannot be found, it does nothing.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

_SETTER: object | None = None  # the C function, False when unavailable
#: Products with fewer multiply-adds than this run on one thread.
SINGLE_THREAD_WORK = 1 << 25


def _find_setter() -> object | None:
    global _SETTER
    if _SETTER is None:
        _SETTER = False
        try:
            import numpy

            root = os.path.dirname(numpy.__file__)
            patterns = ("../numpy.libs/lib*openblas*.so*", ".libs/lib*openblas*.so*", "../numpy.libs/*openblas*.dll")
            for pattern in patterns:
                for path in sorted(glob.glob(os.path.join(root, pattern))):
                    lib = ctypes.CDLL(path)
                    fn = getattr(lib, "openblas_set_num_threads_local", None)
                    if fn is not None:
                        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                        _SETTER = fn
                        break
                if _SETTER:
                    break
        except OSError as exc:  # pragma: no cover - a broken install
            logger.debug("no OpenBLAS thread control: %s", exc)
    return _SETTER or None


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` OpenBLAS threads in this thread (a no-op without OpenBLAS)."""
    fn = _find_setter()
    if fn is None:
        yield
        return
    old = fn(int(n))
    try:
        yield
    finally:
        fn(old)


@contextmanager
def threads_for(work: int) -> Iterator[None]:
    """One BLAS thread for a small product (fewer than ``SINGLE_THREAD_WORK`` multiply-adds)."""
    if work < SINGLE_THREAD_WORK:
        with blas_threads(1):
            yield
    else:
        yield
