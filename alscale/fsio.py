"""How every alscale writer puts files on disk: one atomic-write helper and one lock.

The pool writer, the job output (``selection.parquet``, ``manifest.json``), the chunk
cache, the ledger, simulations, streams, reports and label exports all write through
:class:`AtomicFile` / :func:`atomic_write`, and every writer that owns a directory takes
:class:`DirLock` on it.

**Atomic files.** Locally a file is written under a hidden temporary name in its target
directory (``.NAME.tmp-PID-RANDOM``: pool listings and readers skip names starting with
``.``), fsync'd, renamed over its final name (or hard-linked to it, refusing to replace an
existing file, for append-only stores), and the directory is fsync'd so that the rename
survives a crash. In an object store (``s3://``, ``gs://``) an object appears only when its
single upload completes. Files are created with mode ``0o666`` less the umask, as ``open``
does, so every output of a job has the same permissions. A write that fails removes its
temporary file and raises :class:`~alscale.errors.OutputWriteError`, one line naming the
path and the cause (``No space left on device``, ``Read-only file system``...).

**The lock.** :class:`DirLock` holds an OS lock (``flock``) on ``DIR/.alscale.lock`` for the
life of the job. The kernel releases it when the holder exits, however it exits, so a
killed job's lock is free at once and there is no takeover race: two jobs cannot both
hold it. The file also names its holder (``pid host start-time token``) for the message a
second job prints, and is removed on release only while the lock is still held and still
holds our token (or is empty: the holder line could not be written). A file naming a live
process on this host whose lock cannot be verified (an alscale that predates ``flock``) is
respected too. A pool file being written is locked the same way, by ``.NAME.lock`` beside
it (``name=``). Object-store directories are not locked: ``pyarrow.fs`` has no locking and
no conditional create (S3's ``If-None-Match``, GCS's ``ifGenerationMatch`` are not exposed);
give each job its own output URI.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import platform
import secrets
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs

from alscale.errors import AlscaleError, OutputWriteError

log = logging.getLogger(__name__)

LOCK_FILE = ".alscale.lock"


class _Loc(Protocol):  # alscale.pool.location.Location, without importing the pool package
    fs: pafs.FileSystem
    path: str
    display: str

    @property
    def is_local(self) -> bool: ...


#: The OS errors a write can meet that are the environment's (not a bug), and the advice.
_HINTS = {errno.ENOSPC: "free some space or choose another --out",
          errno.EDQUOT: "free some space or choose another --out",
          errno.EROFS: "choose a writable --out",
          errno.EACCES: "choose a writable --out or fix its permissions",
          errno.EPERM: "choose a writable --out or fix its permissions"}


def _errno_of(exc: BaseException) -> int | None:
    """``exc.errno``, or the errno pyarrow puts in its text (``... [errno 28] No space ...``)."""
    code = getattr(exc, "errno", None)
    if code:
        return int(code)
    text = str(exc)
    for c in (*_HINTS, errno.EIO, errno.ENOENT):
        if f"errno {c}]" in text.lower() or os.strerror(c) in text:
            return c
    return None


def cause(exc: BaseException) -> str:
    """The reason of an OS error in a few words: ``No space left on device (ENOSPC)``."""
    code = _errno_of(exc)
    if code is None:
        return " ".join(str(exc).split()) or type(exc).__name__
    return f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"


def write_error(display: str, exc: BaseException, fix: str = "") -> OutputWriteError:
    """The one-line error of a failed write of ``display``: path, cause and the fix."""
    hint = fix or _HINTS.get(_errno_of(exc) or 0, "check the location and try again")
    return OutputWriteError(f"cannot write {display}: {cause(exc)}; {hint}")


def _local(target: str | os.PathLike[str] | _Loc) -> tuple[pafs.FileSystem, str, str, bool]:
    if hasattr(target, "fs"):
        return target.fs, target.path, target.display, bool(target.is_local)
    path = os.path.abspath(os.fspath(target))
    return pafs.LocalFileSystem(), path, os.fspath(target), True


class AtomicFile:
    """One file, written atomically; use as ``with AtomicFile(path) as out: out.write(...)``.

    ``target``: a local path or a :class:`~alscale.pool.location.Location` (object stores).
    ``replace=False`` refuses to replace an existing file (``FileExistsError``; local only:
    append-only stores). :meth:`open` gives a ``pyarrow`` output stream (IPC and Parquet
    writers take it directly); :meth:`commit` makes the file visible under its final name,
    :meth:`abort` discards it. A failure raises :class:`OutputWriteError` and leaves no file.
    """

    def __init__(self, target: str | os.PathLike[str] | _Loc, *, replace: bool = True) -> None:
        self.fs, self.path, self.display, self.is_local = _local(target)
        self.replace = replace
        head, name = os.path.split(self.path)
        self.tmp = (os.path.join(head, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}") if self.is_local
                    else self.path)
        self._sink: pa.NativeFile | None = None
        self._done = False

    def open(self) -> pa.NativeFile:
        """The output stream (opened on first call)."""
        if self._sink is None:
            try:
                if self.is_local:
                    os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self._sink = self.fs.open_output_stream(self.tmp)
            except OSError as exc:
                self._done = True
                raise write_error(self.display, exc) from None
        return self._sink

    def write(self, data: bytes | bytearray | memoryview | pa.Buffer | str) -> None:
        """Append ``data`` (text is written as UTF-8)."""
        sink = self.open()
        try:
            sink.write(data.encode() if isinstance(data, str) else data)
        except OSError as exc:
            self.abort()
            raise write_error(self.display, exc) from None

    def commit(self) -> None:
        """Close, persist and publish the file under its final name."""
        if self._done:
            return
        sink = self.open()
        try:
            sink.close()
            if self.is_local:
                _fsync_file(self.tmp)
                if self.replace:
                    os.replace(self.tmp, self.path)
                else:
                    os.link(self.tmp, self.path)  # fails if the name exists: never replaces
                    os.unlink(self.tmp)
                fsync_dir(os.path.dirname(self.path))
        except FileExistsError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise write_error(self.display, exc) from None
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Discard what was written (no final file appears; a local file already at the
        final name is untouched)."""
        if self._done:
            return
        self._done = True
        if self._sink is None:
            return
        try:
            self._sink.close()
        except Exception:  # noqa: S110 -- it already failed; the file is being discarded
            pass
        try:
            if self.is_local:
                Path(self.tmp).unlink(missing_ok=True)
            else:
                self.fs.delete_file(self.tmp)
        except Exception as exc:  # a partial object an object store may keep
            log.warning("could not remove the partial file %s: %s", self.tmp, " ".join(str(exc).split()))

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
            return
        self.abort()
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise write_error(self.display, exc) from None


def atomic_write(target: str | os.PathLike[str] | _Loc, data: bytes | bytearray | memoryview | pa.Buffer | str, *,
                 replace: bool = True) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``target`` atomically (see :class:`AtomicFile`)."""
    with AtomicFile(target, replace=replace) as f:
        f.write(data)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Persist a rename in ``path`` (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLock:
    """Exclusive use of a local directory by one writer (see the module docstring).

    ``what`` names the directory in messages (``output``, ``ledger``); ``wait_s`` > 0 waits
    that long for a busy lock (short appends) instead of refusing at once; ``busy`` is the
    advice of the refusal. ``name`` is the lock file's name in the directory (one lock per
    file written there: the pool writer's ``.NAME.lock``) and ``display`` what messages call
    the locked thing (default: the directory). A directory that does not exist is created,
    and removed again on release if it is still empty (a failed job leaves no empty
    directory behind).
    """

    def __init__(self, directory: str | os.PathLike[str] | _Loc, *, what: str = "output", wait_s: float = 0.0,
                 busy: str = "wait for it to finish or choose another --out", name: str = LOCK_FILE,
                 display: str | None = None) -> None:
        fs, path, self.display, local = _local(directory)
        self.display = display or self.display
        self.path = Path(path) / name if local else None
        self.what, self.wait_s, self.busy = what, float(wait_s), busy
        self.token = secrets.token_hex(8)
        self._fd: int | None = None
        self._made_dir = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DirLock:
        if self.path is None or self._fd is not None:
            return self
        directory = self.path.parent
        try:
            self._made_dir = not directory.exists()
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.display, exc) from None
        deadline = time.monotonic() + self.wait_s
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                self._drop_dir()
                raise AlscaleError(f"{self.what} {self.display} is in use by another alscale job "
                                   f"({self._holder_text()}); {self.busy}") from None
            # The file we locked must still be the lock file (a releasing holder unlinks it).
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            legacy = self._live_foreign_holder()
            if legacy is not None:  # named by a process that runs, without flock: respect it
                os.close(fd)
                self._drop_dir()
                raise AlscaleError(f"{self.what} {self.display} is in use by another alscale job "
                                   f"({legacy}); {self.busy}")
            self._fd = fd
            self._write_holder()
            return self

    def _open(self) -> int:
        assert self.path is not None
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # a teammate's lock file (umask 022): locking needs no write access
            try:
                return os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise write_error(self.display, exc) from None
        except OSError as exc:
            self._drop_dir()
            raise write_error(self.display, exc) from None

    def _holder(self) -> list[str]:
        assert self.path is not None
        try:
            return self.path.read_text(errors="replace").split()
        except OSError:
            return []

    def _holder_text(self) -> str:
        h = self._holder()
        pid = int(h[0]) if h and h[0].isdigit() else -1
        if pid < 0:
            return "starting up"
        return f"pid {pid} on {(h[1:2] or ['?'])[0]}, since {(h[2:3] or ['?'])[0]}"

    def _live_foreign_holder(self) -> str | None:
        h = self._holder()
        if len(h) < 2 or not h[0].isdigit():
            return None
        pid, host = int(h[0]), h[1]
        if host != platform.node() or pid == os.getpid():
            return None
        if not _alive(pid):
            if pid > 0:
                log.warning("%s %s: taking over the lock of process %d, which no longer runs", self.what,
                            self.display, pid)
            return None
        return f"pid {pid} on {host}, since {(h[2:3] or ['?'])[0]}"

    def _write_holder(self) -> None:
        assert self._fd is not None
        me = f"{os.getpid()} {platform.node()} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {self.token}\n"
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, me.encode(), 0)
        except OSError:  # opened read-only (a teammate's file) or a full disk: the lock still holds
            pass

    def release(self) -> None:
        """Remove the lock file (if it still names us, or is empty: our holder line could not
        be written, e.g. on a full disk) and release the lock."""
        if self._fd is None:
            return
        assert self.path is not None
        try:
            h = self._holder()
            if not h or (len(h) >= 4 and h[3] == self.token):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None
        self._drop_dir()

    def _drop_dir(self) -> None:
        if self._made_dir and self.path is not None:
            try:
                self.path.parent.rmdir()  # only if empty
            except OSError:
                pass
            self._made_dir = False

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
