"""Where a pool lives: filesystem resolution, format detection and data-file listing.

Local paths use ``pyarrow.fs.LocalFileSystem``; URIs (``s3://``, ``gs://``, ``file://``...)
go through ``pyarrow.fs.FileSystem.from_uri``. Everything downstream works on a
:class:`Location` so that both take the same code path.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs

from alscale.errors import PoolError

IPC_SUFFIXES = (".arrow", ".feather", ".ipc")
PARQUET_SUFFIXES = (".parquet",)
FORMATS = ("ipc", "parquet")


@dataclass(frozen=True)
class Location:
    """A path resolved to a filesystem.

    ``path`` is the path inside ``fs``; ``display`` is what error messages show (the string
    the user gave, or a file inside it); ``canonical`` is what other processes can open from
    any working directory (an absolute local path, or the URI).
    """

    fs: pafs.FileSystem
    path: str
    display: str
    canonical: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, name: str) -> Location:
        """The entry ``name`` inside this directory."""
        join = os.path.join if self.is_local else posixpath.join
        canonical = (os.path.join(self.canonical, name) if not is_uri(self.canonical)
                     else self.canonical.rstrip("/") + "/" + name)
        return Location(self.fs, join(self.path, name), self.display.rstrip("/") + "/" + name,
                        canonical)


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` strings (a Windows drive letter is not a scheme)."""
    head, sep, _ = path.partition("://")
    return bool(sep) and len(head) > 1 and head.replace("+", "").isalnum()


def filesystem_from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """``pyarrow.fs.FileSystem.from_uri`` (one seam, so tests can stand in a remote store)."""
    return pafs.FileSystem.from_uri(uri)


def resolve(path: str) -> Location:
    """Resolve a local path or a ``pyarrow.fs`` URI to a :class:`Location`."""
    if not isinstance(path, (str, os.PathLike)):
        raise PoolError(f"pool path must be a string, got {type(path).__name__}")
    path = os.fspath(path)
    if is_uri(path):
        try:
            fs, inner = filesystem_from_uri(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError / ValueError
            raise PoolError(f"pool {path}: cannot open this URI ({one_line(exc)}); "
                            "use a local path or an s3://, gs:// or file:// URI") from exc
        return Location(fs, inner, path, path)
    local = os.path.abspath(os.path.expanduser(path))
    return Location(pafs.LocalFileSystem(), local, path, local)


def format_from_suffix(path: str) -> str | None:
    """``"ipc"`` / ``"parquet"`` from a file name's suffix, ``None`` when unknown."""
    lower = path.lower().rstrip("/")
    if lower.endswith(IPC_SUFFIXES):
        return "ipc"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def choose_format(path: str, fmt: str | None) -> str:
    """The format to write ``path`` in: ``fmt`` if given (must agree with a known suffix)."""
    by_suffix = format_from_suffix(path)
    if fmt is None:
        if by_suffix is None:
            raise PoolError(f"pool {path}: cannot tell the format from the name; end it in "
                            f"{'/'.join(IPC_SUFFIXES)} (Arrow IPC) or .parquet, or pass format=")
        return by_suffix
    if fmt not in FORMATS:
        raise PoolError(f"pool {path}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if by_suffix is not None and by_suffix != fmt:
        raise PoolError(f"pool {path}: format {fmt!r} does not match the file suffix "
                        f"(which means {by_suffix!r}); rename the file or change the format")
    return fmt


def list_data_files(loc: Location) -> tuple[str, list[Location]]:
    """The pool's format and data files in read order.

    A file is one data file; a directory is a dataset of its ``*.parquet`` or
    ``*.arrow``/``*.feather``/``*.ipc`` files (sorted by name; names starting with ``.``
    or ``_`` -- temporary files, ``_SUCCESS``, ``_metadata`` -- are skipped).
    """
    try:
        info = loc.fs.get_file_info(loc.path)
    except Exception as exc:
        raise PoolError(f"pool {loc.display}: cannot access it ({one_line(exc)}); "
                        "check the path and your credentials") from exc
    if info.type == pafs.FileType.NotFound:
        raise PoolError(f"pool {loc.display}: no such file or directory; check the path "
                        "(create a pool with `alscale pool synth` or write_table)")
    if info.type == pafs.FileType.File:
        fmt = format_from_suffix(loc.path)
        if fmt is None:
            raise PoolError(f"pool {loc.display}: unknown format (suffix "
                            f"{posixpath.splitext(loc.path)[1] or 'none'!r}); name the file "
                            f"*.arrow / *.feather / *.ipc (Arrow IPC) or *.parquet")
        return fmt, [loc]
    if info.type != pafs.FileType.Directory:
        raise PoolError(f"pool {loc.display}: not a regular file or directory")
    entries = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False))
    names = sorted(posixpath.basename(e.path.rstrip("/")) for e in entries
                   if e.type == pafs.FileType.File)
    names = [n for n in names if not n.startswith((".", "_"))]
    by_fmt: dict[str, list[str]] = {"ipc": [], "parquet": []}
    for name in names:
        fmt = format_from_suffix(name)
        if fmt is not None:
            by_fmt[fmt].append(name)
    if by_fmt["ipc"] and by_fmt["parquet"]:
        raise PoolError(f"pool {loc.display}: directory mixes Arrow IPC ({by_fmt['ipc'][0]}) and "
                        f"Parquet ({by_fmt['parquet'][0]}) files; keep one format per pool "
                        "directory")
    fmt = "parquet" if by_fmt["parquet"] else "ipc"
    if not by_fmt[fmt]:
        raise PoolError(f"pool {loc.display}: directory has no *.parquet or *.arrow files; "
                        "point at a pool file or a directory of them")
    return fmt, [loc.child(n) for n in by_fmt[fmt]]


def one_line(exc: BaseException) -> str:
    """An exception's message squashed onto one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def media_base(pool: str) -> str:
    """The directory a pool's relative ``path`` values are relative to: the pool's directory
    (or the pool itself, for a directory of files)."""
    loc = resolve(pool)
    if loc.fs.get_file_info(loc.path).type == pafs.FileType.Directory:
        return loc.canonical
    return loc.canonical.rsplit("/", 1)[0] if is_uri(loc.canonical) else os.path.dirname(loc.canonical)
