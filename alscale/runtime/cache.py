"""Per-chunk caches of model outputs in the output directory, so ``alscale run --resume``
after a killed driver rescores only what was not finished, and a pool that has grown (files
appended to its directory) rescores only its new rows.

Each scored chunk (a contiguous pool row range, ``runtime.chunk_rows`` rows of one shard, or
the part of one that no cache held) becomes two files under ``OUT/cache/``:

- ``rows-<start>-<stop>.arrow``: an Arrow IPC file with ``row_id``, ``log_probs``
  (fixed-size list of K*C float32) and, when the model gives them, ``embedding`` and ``loss``
  (a Learning Loss module's predicted loss);
- ``rows-<start>-<stop>.json``: its record — sha256 and size of the Arrow file, the row
  range, K, C, E, the device type that scored it, the job *fingerprint*, and the pool files
  under its rows (each one's sha256, first row and row count).

The Arrow file is written first and the record second, each atomically, so a record names
a complete file. A cached range is used only when its record parses, its fingerprint equals
the job's, the file's size and sha256 match, the device type matches, the pool files under
its rows are the same files (same sha256 at the same rows) and the file's row ids are the
pool's row ids there; anything else (a truncated or altered file, another model, a pool file
that changed, a missing record) is logged and reported, and those rows are scored again,
never used. A chunk is assembled from every valid cached range that overlaps it, so a new
shard plan (a grown pool is split differently) still reuses the rows it holds; only the rows
no valid cache holds are scored.

The fingerprint is the sha256 of everything a row's model outputs depend on besides the row
itself: the model (factory, its source file's sha256, kwargs, checkpoint sha256, K, batch
size, device, transform), the seed, the input width, and the alscale/torch versions. The
pool is not in it — its files are, by content, in each record — and neither are the
strategy and budget: caches of one run serve a rerun with another strategy, or a pool that
has grown (``--resume --force``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

from alscale.errors import OutputWriteError
from alscale.fsio import atomic_write, write_error
from alscale.pool.location import Location, resolve

logger = logging.getLogger(__name__)

CACHE_DIR = "cache"


def _sha256_file(fs: pafs.FileSystem, path: str, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with fs.open_input_stream(path) as fh:
        while True:
            buf = fh.read(block)
            if not buf:
                break
            h.update(buf)
    return h.hexdigest()


def factory_source(factory: str) -> str | None:
    """The sha256 of the file that defines a ``module:function`` / ``file.py:function`` factory
    (a built-in model name: :mod:`alscale.scoring.builtins`)."""
    target = factory.rsplit(":", 1)[0] if ":" in factory else "alscale.scoring.builtins"
    try:
        if target.endswith(".py"):
            origin: str | None = target
        else:
            spec = importlib.util.find_spec(target)
            origin = spec.origin if spec is not None else None
        if origin and os.path.isfile(origin):
            return hashlib.sha256(Path(origin).read_bytes()).hexdigest()
    except (ImportError, ValueError, OSError):
        return None
    return None


def fingerprint(info: Any, model_spec: Any, seed: int, in_features: int,
                pool_files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The record of what a row's model outputs depend on (see the module docstring), its
    sha256 under ``"sha256"``, and (not hashed) the pool's files with their content hashes
    (:func:`alscale.runtime.inputs.pool_files`) under ``"pool_files"``."""
    import torch

    import alscale

    checkpoint = None
    if model_spec.checkpoint:
        loc = resolve(str(model_spec.checkpoint))
        checkpoint = [loc.canonical, _sha256_file(loc.fs, loc.path)]
    record: dict[str, Any] = {
        "model": {
            "factory": model_spec.factory,
            "factory_source_sha256": factory_source(model_spec.factory),
            "kwargs": _plain(model_spec.kwargs),  # key order must not matter (a read-only mapping)
            "checkpoint": checkpoint,
            "mc_samples": model_spec.mc_samples,
            "batch_size": model_spec.batch_size,
            "device": model_spec.device,
            "transform": model_spec.transform,
        },
        "seed": int(seed),
        "in_features": int(in_features),
        "versions": {"alscale": getattr(alscale, "__version__", None), "torch": torch.__version__},
    }
    text = json.dumps(record, sort_keys=True, default=str)
    record["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    if pool_files is None:
        from alscale.runtime.inputs import pool_files as hash_pool_files

        pool_files = hash_pool_files(info)
    record["pool"] = {"path": info.path, "n_rows": info.n_rows}
    record["pool_files"] = [[f["sha256"], f["first_row"], f["rows"]] for f in pool_files]
    return record


def _plain(obj: Any) -> Any:
    """Mappings (read-only ones too) as dicts, recursively, so the fingerprint sorts their keys."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _segments(pool_files: list[list[Any]], start: int, stop: int) -> list[list[Any]]:
    """The pool files (sha256, first row, rows) under rows ``[start, stop)``."""
    return [f for f in pool_files if f[1] < stop and f[1] + f[2] > start]


@dataclass
class CacheStats:
    """What one worker's cache did: chunks reused, computed, and rejected (with the reason)."""

    reused: list[list[int]] = field(default_factory=list)  # [start, stop] pool rows
    computed: list[list[int]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


class ChunkCache:
    """The cache files of one output directory (local path or URI), for one fingerprint.

    Args:
        out_dir: the job's output location.
        record: :func:`fingerprint`'s record; its optional ``"sources"`` lists the output
            directories of earlier runs whose caches are read too (``alscale run --cache-from``;
            never written).
        reuse: read valid caches of ``out_dir`` (``--resume``); otherwise only write them.
    """

    def __init__(self, out_dir: Location, record: dict[str, Any], *, reuse: bool) -> None:
        from alscale.runtime.output import output_location

        self.dir = out_dir.child(CACHE_DIR)
        self.dirs = [self.dir] + [output_location(d).child(CACHE_DIR) for d in record.get("sources", ())]
        self.record = record
        self.reuse = reuse
        self.stats = CacheStats()
        self._made_dir = False
        self._write_failed = False
        self._index: list[tuple[int, int, int]] | None = None
        self._tables: dict[tuple[int, int, int], tuple[dict[str, Any], Any]] = {}  # valid cached ranges, read
        self._bad: dict[tuple[int, int, int], str] = {}  # rejected cached ranges and why

    def _names(self, start: int, stop: int, d: int = 0) -> tuple[Location, Location]:
        stem = f"rows-{start:012d}-{stop:012d}"
        return self.dirs[d].child(stem + ".arrow"), self.dirs[d].child(stem + ".json")

    def _entries(self) -> list[tuple[int, int, int]]:
        """Every record (start, stop, directory index) readable now, by start (listed once):
        this output's when reusing, and every source's."""
        if self._index is None:
            self._index = []
            for d, where in enumerate(self.dirs):
                if (d == 0 and not self.reuse) or where.fs.get_file_info(where.path).type != pafs.FileType.Directory:
                    continue
                for f in where.fs.get_file_info(pafs.FileSelector(where.path)):
                    name = f.path.rsplit("/", 1)[-1]
                    parts = name[:-5].split("-") if name.startswith("rows-") and name.endswith(".json") else []
                    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                        self._index.append((int(parts[1]), int(parts[2]), d))
            self._index.sort()
        return self._index

    def load_parts(self, start: int, stop: int, row_ids_B: np.ndarray, device_type: str
                   ) -> list[tuple[int, int, tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None]]:
        """Pool rows ``[start, stop)`` as consecutive pieces ``(a, b, outputs)``: the cached
        ``(log_probs, embeddings | None, loss | None)`` of rows ``[a, b)`` from the valid cached
        ranges that overlap them (reported as reused), or None where no valid cache holds them
        (to score)."""
        valid = []
        for key in self._entries():
            if key[0] < stop and key[1] > start:
                table = self._valid_table(key, device_type)
                if table is not None:
                    valid.append((key, table))
        pieces: list[tuple[int, int, Any]] = []
        pos = start
        while pos < stop:
            cover = [v for v in valid if v[0][0] <= pos < v[0][1]]
            if not cover:
                nxt = min([v[0][0] for v in valid if v[0][0] > pos] + [stop])
                pieces.append((pos, nxt, None))
                pos = nxt
                continue
            key, table = max(cover, key=lambda v: (v[0][1], -v[0][2]))
            b = min(key[1], stop)
            got = self._slice(table, key, pos, b, row_ids_B[pos - start:b - start])
            pieces.append((pos, b, got))
            if got is not None:
                self.stats.reused.append([pos, b])
            pos = b
        for key in [k for k in self._tables if k[1] <= stop]:  # chunks come in row order: done with these
            del self._tables[key]
        return _merge_gaps(pieces)

    def _slice(self, table: Any, key: tuple[int, int, int], a: int, b: int, row_ids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
        """Rows ``[a, b)`` of cached range ``key``; None (rejected) when its row ids are not the pool's."""
        rec, t = table
        t = t.slice(a - key[0], b - a)
        ids = t.column("row_id").to_numpy()
        if ids.shape != row_ids.shape or not np.array_equal(ids, row_ids):
            self._reject(key, "its row ids are not the pool's rows in this range (the pool changed)")
            return None
        k, c = int(rec["n_samples"]), int(rec["n_classes"])
        lp = np.asarray(t.column("log_probs").combine_chunks().flatten().to_numpy(), np.float32)
        emb = None
        if rec.get("embedding_dim"):
            e = np.asarray(t.column("embedding").combine_chunks().flatten().to_numpy(), np.float32)
            emb = e.reshape(len(ids), int(rec["embedding_dim"])).copy()
        loss = np.asarray(t.column("loss").to_numpy(), np.float32).copy() if "loss" in t.column_names else None
        return lp.reshape(len(ids), k, c).copy(), emb, loss

    def _reject(self, key: tuple[int, int, int], reason: str) -> None:
        data, _ = self._names(*key)
        self._tables.pop(key, None)
        if key not in self._bad:
            self._bad[key] = reason
            logger.warning("cache %s: %s; scoring rows [%d, %d) again", data.display, reason, key[0], key[1])
            self.stats.rejected.append({"rows": [key[0], key[1]], "file": data.display, "reason": reason})

    def _valid_table(self, key: tuple[int, int, int], device_type: str) -> tuple[dict[str, Any], Any] | None:
        """The record and Arrow table of cached range ``key`` when valid (checked once)."""
        if key in self._bad:
            return None
        if key not in self._tables:
            data, meta = self._names(*key)
            try:
                out = self._load_checked(data, meta, key[0], key[1], device_type)
            except Exception as exc:  # any damage: a truncated file, bad JSON, wrong type ...
                out = f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            if isinstance(out, str):
                self._reject(key, out)
                return None
            self._tables[key] = out
        return self._tables[key]

    def _load_checked(self, data: Location, meta: Location, start: int, stop: int, device_type: str
                      ) -> tuple[dict[str, Any], Any] | str:
        fs = data.fs
        with fs.open_input_stream(meta.path) as fh:
            rec = json.loads(fh.read().decode())
        if rec.get("fingerprint") != self.record["sha256"]:
            return "made by another model, seed or version (fingerprint differs)"
        if rec.get("rows") != [start, stop]:
            return f"its record names rows {rec.get('rows')}"
        if rec.get("device_type") != device_type:
            return f"scored on {rec.get('device_type')}, this worker scores on {device_type}"
        if rec.get("pool_files") != _segments(self.record["pool_files"], start, stop):
            return "the pool's files under these rows are not the ones it was scored from (a file changed or moved)"
        info = fs.get_file_info(data.path)
        if info.type != pafs.FileType.File:
            return "its Arrow file is missing"
        if info.size != rec.get("bytes"):
            return f"size {info.size} bytes, its record says {rec.get('bytes')} (truncated or altered)"
        if _sha256_file(fs, data.path) != rec.get("sha256"):
            return "sha256 differs from its record (altered)"
        with fs.open_input_file(data.path) as fh:
            table = ipc.open_file(fh).read_all()
        if table.num_rows != stop - start:
            return f"it holds {table.num_rows} rows, its record names {stop - start}"
        return rec, table

    def store(self, start: int, stop: int, row_ids_B: np.ndarray, log_probs_B_K_C: np.ndarray,
              embeddings_B_E: np.ndarray | None, device_type: str, loss_B: np.ndarray | None = None) -> None:
        """Write the chunk's outputs and then its record, each atomically."""
        n, k, c = log_probs_B_K_C.shape
        cols: dict[str, pa.Array] = {
            "row_id": pa.array(np.asarray(row_ids_B, np.int64)),
            "log_probs": pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(log_probs_B_K_C, np.float32).reshape(-1)), k * c),
        }
        if embeddings_B_E is not None:
            cols["embedding"] = pa.FixedSizeListArray.from_arrays(
                pa.array(np.ascontiguousarray(embeddings_B_E, np.float32).reshape(-1)), embeddings_B_E.shape[1])
        if loss_B is not None:
            cols["loss"] = pa.array(np.asarray(loss_B, np.float32))
        sink = pa.BufferOutputStream()
        table = pa.table(cols)
        with ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        body = sink.getvalue()
        rec = {
            "rows": [int(start), int(stop)],
            "bytes": body.size,
            "sha256": hashlib.sha256(memoryview(body)).hexdigest(),
            "n_samples": int(k), "n_classes": int(c),
            "embedding_dim": None if embeddings_B_E is None else int(embeddings_B_E.shape[1]),
            "device_type": device_type,
            "fingerprint": self.record["sha256"],
            "pool_files": _segments(self.record["pool_files"], start, stop),
            "job": {k: v for k, v in self.record.items() if k not in ("pool_files", "sources")},
        }
        data, meta = self._names(start, stop)
        if self._write_failed:
            return
        try:
            if not self._made_dir:
                try:
                    self.dir.fs.create_dir(self.dir.path, recursive=True)
                except OSError as exc:
                    raise write_error(self.dir.display, exc) from None
                self._made_dir = True
            atomic_write(data, body)
            try:
                atomic_write(meta, (json.dumps(rec, indent=1, default=str) + "\n").encode())
            except OutputWriteError:
                try:  # a file without its record is never used: remove it
                    self.dir.fs.delete_file(data.path)
                except OSError:
                    pass
                raise
        except OutputWriteError as exc:
            # The cache only speeds up --resume: scoring goes on without it (and a full
            # disk then fails the job's own output writes, with one line).
            self._write_failed = True
            logger.warning("cache: %s; scoring continues without caching", exc)
            return
        self.stats.computed.append([int(start), int(stop)])


def _merge_gaps(pieces: list[tuple[int, int, Any]]) -> list[tuple[int, int, Any]]:
    """Adjacent pieces that no cache holds become one range to score."""
    out: list[tuple[int, int, Any]] = []
    for a, b, got in pieces:
        if got is None and out and out[-1][2] is None and out[-1][1] == a:
            out[-1] = (out[-1][0], b, None)
        else:
            out.append((a, b, got))
    return out


def has_caches(out_dir: Location) -> bool:
    """Whether the output directory holds cache records (an interrupted or earlier run)."""
    d = out_dir.child(CACHE_DIR)
    if d.fs.get_file_info(d.path).type != pafs.FileType.Directory:
        return False
    return any(f.path.endswith(".json") for f in d.fs.get_file_info(pafs.FileSelector(d.path)))


def remove_caches(out_dir: Location) -> None:
    """Delete the cache directory (a run that starts over)."""
    d = out_dir.child(CACHE_DIR)
    if d.fs.get_file_info(d.path).type == pafs.FileType.Directory:
        d.fs.delete_dir(d.path)
