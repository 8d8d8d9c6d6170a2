"""The output directory of a job: ``selection.parquet`` and ``manifest.json``, written atomically.

The directory is a local path or a ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``file://``;
credentials from the environment, as for pools) — one code path. Every file goes through
:mod:`alscale.fsio` (temporary name, fsync, rename; one upload in an object store), so a
reader never sees a half-written file. The manifest is written last and defines a finished
output: a directory whose manifest exists holds a finished selection; a selection without
its manifest is the remainder of a failed or killed write (a failed write removes it; the
next run rewrites it).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from alscale.errors import AlscaleError
from alscale.fsio import LOCK_FILE, DirLock, atomic_write, cause, write_error  # noqa: F401 (re-exported)
from alscale.pool import location, write_table
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
    # The manifest, written last, defines a finished output; a selection without one was
    # cut off while writing (a run rewrites it).
    done = [name for name in (MANIFEST_FILE,) if loc.fs.get_file_info(loc.child(name).path).type == pafs.FileType.File]
    if done and not force:
        if resume:
            raise AlscaleError(f"output {loc.display} already holds a finished selection ({done[0]}); pass --force "
                               "with --resume to select again from its cached scores, or choose another --out")
        raise AlscaleError(f"output {loc.display} already holds a selection ({done[0]}); "
                           "pass --force or choose another --out")
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
    """``row_id, rank (1 = first pick), score, strategy, round``, then the selection's
    provenance columns (a composed selection's ``filter``, ``score_<component>``,
    ``combined``, ``group``, ``distance``): text columns as strings, NaN as null."""
    b = len(selection)
    cols = {
        "row_id": pa.array(np.asarray(selection.indices_B, dtype=np.int64)),
        "rank": pa.array(np.arange(1, b + 1, dtype=np.int32)),
        "score": pa.array(np.asarray(selection.scores_B, dtype=np.float64)),
        "strategy": pa.array([selection.strategy] * b, type=pa.string()),
        "round": pa.array(np.full(b, round, dtype=np.int32)),
    }
    for name, values in (selection.provenance or {}).items():
        v = np.asarray(values)
        if v.dtype == object:
            cols[name] = pa.array([None if x is None else str(x) for x in v.tolist()], type=pa.string())
        else:
            v = v.astype(np.float64)
            cols[name] = pa.array(v, mask=np.isnan(v))
    return pa.table(cols)


def write_selection(out_dir: str | Path, selection: Selection, round: int) -> None:
    """Write ``selection.parquet`` atomically (creating a local directory).

    An earlier manifest is removed first: from here until :func:`write_manifest` the
    directory does not hold a finished selection (a crash in between leaves no old manifest
    describing a new selection)."""
    loc = output_location(out_dir)
    try:
        loc.fs.create_dir(loc.path, recursive=True)  # a directory locally; a no-op marker in object stores
        man = loc.child(MANIFEST_FILE)
        if loc.fs.get_file_info(man.path).type == pafs.FileType.File:
            loc.fs.delete_file(man.path)
    except OSError as exc:
        raise write_error(loc.display, exc) from None
    # (no per-file lock: the job holds the output directory's lock)
    write_table(selection_table(selection, round), loc.child(SELECTION_FILE).canonical, format="parquet", lock=False)


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically; written last, it marks a finished selection."""
    loc = output_location(out_dir)
    text = json.dumps(manifest, indent=2, default=_jsonable) + "\n"
    atomic_write(loc.child(MANIFEST_FILE), text)


def discard_unfinished(out_dir: str | Path) -> None:
    """Remove a ``selection.parquet`` that has no manifest (a write that failed part-way):
    what a failed run wrote is rolled back, and the directory reads as not finished."""
    loc = output_location(out_dir)
    try:
        if loc.fs.get_file_info(loc.child(MANIFEST_FILE).path).type != pafs.FileType.File:
            sel = loc.child(SELECTION_FILE)
            if loc.fs.get_file_info(sel.path).type == pafs.FileType.File:
                loc.fs.delete_file(sel.path)
    except OSError as exc:  # the original failure is the one to report
        logging.getLogger(__name__).warning("output %s: could not remove the unfinished %s (%s)", loc.display,
                                            SELECTION_FILE, cause(exc))


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


class OutputLock(DirLock):
    """Exclusive use of a local output directory by one job (a second job refuses, clearly):
    :class:`alscale.fsio.DirLock` on the directory, held for the job's life. Object-store
    outputs are not locked (pyarrow.fs has no locking); give each job its own output URI.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.loc = output_location(out_dir)
        super().__init__(self.loc, what="output")
