"""Exceptions that carry a one-line, user-facing message.

Every error a user can cause (bad pool, bad job file, bad argument) is an
``AlscaleError``: its message names the culprit (file, column, row, value) and the fix.
The CLI prints it on one line and exits with code 2.
"""

from __future__ import annotations

import itertools
import reprlib


class AlscaleError(ValueError):
    """Base class for user-facing errors (bad input, bad configuration)."""


class PoolError(AlscaleError):
    """The pool (or labelled-set) file is missing, malformed or holds invalid values."""


class JobError(AlscaleError):
    """The job file or its overrides are invalid."""


class WorkerLostError(RuntimeError):
    """A shard worker process died during a job (not bad input: the CLI exits with code 1)."""


class OutputWriteError(RuntimeError):
    """Writing an output failed for a reason outside the job (a full disk, a read-only or
    unwritable location). The message is one line naming the path and the cause; what the
    failed write had written is removed. The CLI prints it and exits with code 1."""


#: Longest value an error message shows (``short_repr``'s default).
VALUE_LIMIT = 100


class _ShortRepr(reprlib.Repr):
    """``reprlib`` with bounded depth/width that keeps a mapping's insertion order (as
    ``repr`` does), so a short value reads the same as its ``repr``."""

    def repr_dict(self, x: dict, level: int) -> str:  # noqa: D102 -- reprlib's hook
        if not x:
            return "{}"
        if level <= 0:
            return "{" + self.fillvalue + "}"
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                  for k, v in itertools.islice(x.items(), self.maxdict)]
        if len(x) > self.maxdict:
            pieces.append(self.fillvalue)
        return "{" + ", ".join(pieces) + "}"


_REPR = _ShortRepr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 3, 6, 8, 8
_REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = _REPR.maxarray = 8
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = VALUE_LIMIT, 40, VALUE_LIMIT


def short_repr(value: object, limit: int = VALUE_LIMIT) -> str:
    """``repr(value)`` bounded to about ``limit`` characters, at a cost bounded by the limit
    (never the full repr of a huge or deeply nested value: a YAML alias bomb, a long list).

    Every error message that shows a user's value goes through this, so that no value can
    make a "one-line" error megabytes long. Short values read exactly as ``repr``.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # a value whose __repr__ fails still gets a message
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."
