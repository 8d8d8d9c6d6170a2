"""Progress of a selection loop, reported to whoever listens (the CLI's progress bar).

Loops call :func:`advance` with the number of rows they have just picked; outside
:func:`reporting` that is a no-op, so the loops stay pure functions of their inputs. A
context variable carries the listener, so concurrent selections do not mix.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_listener: contextvars.ContextVar[Callable[[int], object] | None] = contextvars.ContextVar(
    "alscale_selection_progress", default=None)


@contextmanager
def reporting(listener: Callable[[int], object]) -> Iterator[None]:
    """Within the block, :func:`advance` calls ``listener(n)``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def advance(n: int = 1) -> None:
    """Report ``n`` more picks."""
    fn = _listener.get()
    if fn is not None and n:
        fn(int(n))
