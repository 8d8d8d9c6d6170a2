"""The output directory of a job: ``selection.parquet`` and ``manifest.json``, written atomically.

The directory is a local path or a ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``file://``;
credentials from the environment, as for pools) — one code path. Locally each file goes to
a temporary name in the same directory, is fsync'd, then renamed over its final name, so a
reader never sees a half-written file; in an object store an object appears only when its
upload completes. The manifest is written last: a directory whose manifest exists holds a
finished selection.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from alscale.errors import AlscaleError
from alscale.pool import write_table
from alscale.pool import location
from alscale.pool.location import Location, is_uri, one_line
from alscale.types import Selection

SELECTION_FILE = "selection.parquet"
MANIFEST_FILE = "manifest.json"


def output_location(out_dir: str | Path) -> Location:
    """Resolve an output directory (local path or URI) to a filesystem location."""
    target = os.fspath(out_dir)
    if is_uri(target):
        try:
            fs, inner = location.filesystem_from_uri(target)
        except Exception as exc:
            raise AlscaleError(f"output {target}: cannot open this URI ({one_line(exc)}); use a local path or an "
                               "s3://, gs:// or file:// URI (credentials come from the environment)") from None
        return Location(fs, inner.rstrip("/"), target, target.rstrip("/"))
    local = os.path.abspath(os.path.expanduser(target))
    return Location(pafs.LocalFileSystem(), local, target, local)


def check_output_dir(out_dir: str | Path, *, force: bool, resume: bool = False) -> None:
    """Refuse to overwrite a finished selection unless ``force``, and to start over on the
    caches of an interrupted run unless ``resume`` (continue it) or ``force`` (start over)."""
    from alscale.runtime.cache import has_caches

    loc = output_location(out_dir)
    if loc.fs.get_file_info(loc.path).type == pafs.FileType.File:
        raise AlscaleError(f"output {loc.display} exists and is not a directory; choose another --out")
    done = [name for name in (SELECTION_FILE, MANIFEST_FILE)
            if loc.fs.get_file_info(loc.child(name).path).type == pafs.FileType.File]
    if resume and MANIFEST_FILE not in done:
        done = []  # a selection without its manifest was cut off while writing: resume rewrites it
    if done and not force:
        if resume:
            raise AlscaleError(f"output {loc.display} already holds a finished selection ({done[0]}); pass --force "
                               "with --resume to select again from its cached scores, or choose another --out")
        raise AlscaleError(f"output {loc.display} already holds a selection ({done[0]}); pass --force or choose another --out")
    if not done and not resume and not force and has_caches(loc):
        raise AlscaleError(f"output {loc.display} holds the cached scores of an interrupted run; pass --resume to "
                           "continue it (valid caches are reused), --force to start over, or choose another --out")


def remove_partial_files(out_dir: str | Path) -> list[str]:
    """Delete the temporary files a killed writer left in a local output directory and its
    cache (``.NAME.tmp...``: never a finished file); returns their names."""
    from alscale.runtime.cache import CACHE_DIR

    loc = output_location(out_dir)
    if not loc.is_local:
        return []
    removed = []
    for d in (Path(loc.path), Path(loc.path) / CACHE_DIR):
        if d.is_dir():
            for f in d.iterdir():
                ours = f.name[1:].startswith((SELECTION_FILE, MANIFEST_FILE, "rows-"))
                if f.name.startswith(".") and ours and ".tmp" in f.name and f.is_file():
                    f.unlink(missing_ok=True)
                    removed.append(f.name)
    return removed


def selection_table(selection: Selection, round: int) -> pa.Table:
    """``row_id, rank (1 = first pick), score, strategy, round``."""
    b = len(selection)
    return pa.table(
        {
            "row_id": pa.array(np.asarray(selection.indices_B, dtype=np.int64)),
            "rank": pa.array(np.arange(1, b + 1, dtype=np.int32)),
            "score": pa.array(np.asarray(selection.scores_B, dtype=np.float64)),
            "strategy": pa.array([selection.strategy] * b, type=pa.string()),
            "round": pa.array(np.full(b, round, dtype=np.int32)),
        }
    )


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a fsync'd temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_selection(out_dir: str | Path, selection: Selection, round: int) -> None:
    """Write ``selection.parquet`` atomically (creating a local directory)."""
    loc = output_location(out_dir)
    loc.fs.create_dir(loc.path, recursive=True)  # a directory locally; a no-op marker in object stores
    write_table(selection_table(selection, round), loc.child(SELECTION_FILE).canonical, format="parquet")


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically; written last, it marks a finished selection."""
    loc = output_location(out_dir)
    text = json.dumps(manifest, indent=2, default=_jsonable) + "\n"
    if loc.is_local:
        atomic_write_text(Path(loc.child(MANIFEST_FILE).path), text)
    else:
        with loc.fs.open_output_stream(loc.child(MANIFEST_FILE).path) as fh:
            fh.write(text.encode())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def versions() -> dict[str, str | None]:
    """Versions of the pieces that can change an answer or a timing."""
    import pyarrow

    import alscale

    out: dict[str, str | None] = {
        "alscale": alscale.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
    }
    for mod in ("torch", "ray"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                from importlib.metadata import version

                out[mod] = version(mod)
            except Exception:  # not installed
                out[mod] = None
        else:
            out[mod] = getattr(m, "__version__", None)
    return out


def git_revision() -> str | None:
    """The alscale checkout's commit (with ``-dirty`` when it has local changes), if any."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def machine() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
    }


LOCK_FILE = ".alscale.lock"


class OutputLock:
    """Exclusive use of a local output directory by one job (a second job refuses, clearly).

    The lock is a file created with ``O_CREAT | O_EXCL`` holding ``pid host start-time``; it
    is removed when the job ends. A lock left by a process that no longer runs on this host
    (a killed driver) is taken over with a warning. Object-store outputs are not locked
    (pyarrow.fs has no exclusive create); give each job its own output URI.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.loc = output_location(out_dir)
        self.path = Path(self.loc.path) / LOCK_FILE if self.loc.is_local else None
        self._held = False
        self._made_dir = False

    def __enter__(self) -> "OutputLock":
        if self.path is None:
            return self
        self._made_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {platform.node()} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.path.read_text(errors="replace").split()
                pid, host = (int(holder[0]) if holder and holder[0].isdigit() else -1), (holder[1:2] or ["?"])[0]
                since = (holder[2:3] or ["?"])[0]
                if host == platform.node() and pid > 0 and not _alive(pid):
                    logging.getLogger(__name__).warning(
                        "output %s: taking over the lock of process %d, which no longer runs", self.loc.display, pid)
                    self.path.unlink(missing_ok=True)
                    continue
                raise AlscaleError(
                    f"output {self.loc.display} is in use by another alscale job (pid {pid} on {host}, since "
                    f"{since}); wait for it to finish or choose another --out") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            self._held = True
            return self
        raise AlscaleError(f"output {self.loc.display}: could not take the lock {self.path}; remove it if no job runs")

    def __exit__(self, *exc: object) -> None:
        if self._held and self.path is not None:
            self.path.unlink(missing_ok=True)
            self._held = False
            if self._made_dir:  # a failed job leaves no empty directory behind
                try:
                    self.path.parent.rmdir()
                except OSError:
                    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
