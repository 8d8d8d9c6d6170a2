"""Exceptions that carry a one-line, user-facing message.

Every error a user can cause (bad pool, bad job file, bad argument) is an
``AlscaleError``: its message names the culprit (file, column, row, value) and the fix.
The CLI prints it on one line and exits with code 2.
"""

from __future__ import annotations


class AlscaleError(ValueError):
    """Base class for user-facing errors (bad input, bad configuration)."""


class PoolError(AlscaleError):
    """The pool (or labelled-set) file is missing, malformed or holds invalid values."""


class JobError(AlscaleError):
    """The job file or its overrides are invalid."""


class WorkerLostError(RuntimeError):
    """A shard worker process died during a job (not bad input: the CLI exits with code 1)."""
