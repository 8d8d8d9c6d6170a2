"""The exact versions of a job's inputs, for the manifest: content hashes (sha256, streamed)
of the pool's data files, the model checkpoint, the model factory's source file and the
labelled set's files, and where the embeddings came from.

Every pool file is read once, start to end, in blocks of 4 MiB through ``pyarrow.fs`` (local
or object store), on up to four threads (hashlib releases the GIL on large blocks). The
cost is the pool's bytes read once more by the driver: measured in README ("Rounds that know
their history"). :class:`PoolHasher` does it on a background thread while the job runs, so a
job waits for it only when its chunk cache needs the hashes before scoring (a model job with
``runtime.cache``), or at the end when the hashing outlasted the job. The per-chunk cache of
model outputs (:mod:`alscale.runtime.cache`) uses the same hashes to tell which cached rows
still belong to the pool (a grown pool reuses them).
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from alscale.pool.location import resolve

BLOCK = 4 << 20


class _Cancelled(Exception):
    pass


def sha256_of(path: str, stop: threading.Event | None = None) -> tuple[str, int]:
    """(sha256 hex, bytes) of the file at ``path`` (local path or URI), streamed; gives up
    (``_Cancelled``) when ``stop`` is set. A local file is read into one reused buffer (half
    the CPU time of pyarrow's stream, which allocates a block per read), never mapped: mapped
    pages would count in the process's RSS, which the memory budget bounds."""
    loc = resolve(path)
    h = hashlib.sha256()
    n = 0
    if loc.is_local:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        with open(loc.path, "rb", buffering=0) as fh:
            while got := fh.readinto(buf):
                if stop is not None and stop.is_set():
                    raise _Cancelled
                h.update(view[:got])
                n += got
        return h.hexdigest(), n
    with loc.fs.open_input_stream(loc.path) as fh:
        while True:
            if stop is not None and stop.is_set():
                raise _Cancelled
            chunk = fh.read(BLOCK)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def pool_files(info: Any, stop: threading.Event | None = None) -> list[dict[str, Any]]:
    """Per data file of the pool, in read order: canonical path, first row, rows, bytes, sha256."""
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(info.files)))) as ex:
        hashes = list(ex.map(lambda f: sha256_of(f, stop), info.files))
    out, first = [], 0
    for name, rows, (sha, size) in zip(info.files, info.file_rows, hashes, strict=True):
        out.append({"path": name, "first_row": first, "rows": int(rows), "bytes": size, "sha256": sha})
        first += int(rows)
    return out


class PoolHasher:
    """:func:`pool_files` of ``info`` on a background thread, started at once; :meth:`result`
    waits for it (and re-raises its error), :meth:`cancel` stops it early."""

    def __init__(self, info: Any) -> None:
        self._stop = threading.Event()
        self._files: list[dict[str, Any]] | None = None
        self._error: BaseException | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(info,), name="alscale-pool-hash", daemon=True)
        self._thread.start()

    def _run(self, info: Any) -> None:
        t0 = time.perf_counter()
        try:
            self._files = pool_files(info, self._stop)
        except _Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 -- re-raised by result()
            self._error = exc
        self.seconds = time.perf_counter() - t0

    def result(self) -> list[dict[str, Any]]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._files is not None
        return self._files

    def cancel(self) -> None:
        self._stop.set()

    def __enter__(self) -> PoolHasher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()  # the job ended (or failed): stop hashing what nobody will read


def _labeled_files(path: str) -> list[dict[str, Any]]:
    """The labelled set's files (a file, or every file of a ledger directory, local or in an
    object store) with their sha256."""
    import pyarrow.fs as pafs

    loc = resolve(path)
    if loc.fs.get_file_info(loc.path).type == pafs.FileType.Directory:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
        names = sorted(i.path for i in infos if i.type == pafs.FileType.File
                       and not i.path.rsplit("/", 1)[-1].startswith("."))
        files = [loc.canonical.rstrip("/") + "/" + n[len(loc.path.rstrip("/")) + 1:] for n in names]
    else:
        files = [loc.canonical]
    out = []
    for f in files:
        sha, size = sha256_of(f)
        out.append({"path": f, "bytes": size, "sha256": sha})
    return out


def input_versions(job: Any, info: Any, files: list[dict[str, Any]], embedding_source: str | None,
                   model_record: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's ``inputs``: the pool files (``files``, from :func:`pool_files`), the model
    (factory, its source file's sha256, kwargs, checkpoint sha256), the labelled set, and the
    embeddings' source (the model, or the pool's ``embedding`` column, i.e. the pool files)."""
    model = None
    if job.model is not None:
        from alscale.runtime.cache import factory_source

        ckpt = None
        if job.model.checkpoint:
            if model_record is not None and model_record["model"]["checkpoint"]:
                ckpt = dict(zip(("path", "sha256"), model_record["model"]["checkpoint"]))
            else:
                sha, _ = sha256_of(str(job.model.checkpoint))
                ckpt = {"path": resolve(str(job.model.checkpoint)).canonical, "sha256": sha}
        model = {"factory": job.model.factory, "factory_source_sha256": factory_source(job.model.factory),
                 "kwargs": dict(job.model.kwargs), "checkpoint": ckpt, "mc_samples": job.model.mc_samples}
    emb = None
    if embedding_source == "model":
        emb = {"source": "model", "model": model}
    elif embedding_source == "column":
        emb = {"source": "column", "column": "embedding", "pool_sha256": [f["sha256"] for f in files]}
    return {
        "pool": {"path": info.path, "n_rows": info.n_rows, "files": files,
                 "bytes": sum(f["bytes"] for f in files)},
        "model": model,
        "labeled": None if not job.labeled else {"path": job.labeled, "files": _labeled_files(job.labeled)},
        "embeddings": emb,
    }
