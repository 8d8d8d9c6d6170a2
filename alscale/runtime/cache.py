"""Per-chunk caches of model outputs in the output directory, so ``alscale run --resume``
after a killed driver rescores only what was not finished.

Each scored chunk (a contiguous pool row range, ``runtime.chunk_rows`` rows of one shard)
becomes two files under ``OUT/cache/``:

- ``rows-<start>-<stop>.arrow``: an Arrow IPC file with ``row_id``, ``log_probs``
  (fixed-size list of K*C float32) and, when the model gives them, ``embedding`` and ``loss``
  (a Learning Loss module's predicted loss);
- ``rows-<start>-<stop>.json``: its record — sha256 and size of the Arrow file, the row
  range, K, C, E, the device type that scored it, and the job *fingerprint*.

The Arrow file is written first and the record second, each atomically, so a record names
a complete file. A cache is used only when its record parses, its fingerprint equals the
job's, the file's size and sha256 match, the device type matches, and the file's row ids are
the shard's row ids for that range; anything else (a truncated or altered file, another
model or pool, a missing record) is logged and the chunk is scored again, never used.

The fingerprint is the sha256 of everything a row's model outputs depend on: the pool
(canonical path, rows, every data file's size and modification time), the model (factory,
its source file's sha256, kwargs, checkpoint sha256, K, batch size, device, transform),
the seed, the input width, and the alscale/torch versions. The strategy and budget are not
in it: caches of one run serve a rerun with another strategy (``--resume --force``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
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


def _factory_source(factory: str) -> str | None:
    """The sha256 of the file that defines a ``module:function`` / ``file.py:function`` factory."""
    target = factory.rsplit(":", 1)[0]
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


def fingerprint(info: Any, model_spec: Any, seed: int, in_features: int) -> dict[str, Any]:
    """The record of what a row's model outputs depend on (see the module docstring), and
    its sha256 under ``"sha256"``."""
    import torch

    import alscale

    files = []
    for name in info.files:
        loc = resolve(name)
        fi = loc.fs.get_file_info(loc.path)
        files.append([loc.canonical, fi.size, fi.mtime_ns])
    checkpoint = None
    if model_spec.checkpoint:
        loc = resolve(str(model_spec.checkpoint))
        checkpoint = [loc.canonical, _sha256_file(loc.fs, loc.path)]
    record: dict[str, Any] = {
        "pool": {"path": info.path, "n_rows": info.n_rows, "files": files},
        "model": {
            "factory": model_spec.factory,
            "factory_source_sha256": _factory_source(model_spec.factory),
            "kwargs": model_spec.kwargs,
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
    return record


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
        record: :func:`fingerprint`'s record.
        reuse: read valid caches (``--resume``); otherwise only write them.
    """

    def __init__(self, out_dir: Location, record: dict[str, Any], *, reuse: bool) -> None:
        self.dir = out_dir.child(CACHE_DIR)
        self.record = record
        self.reuse = reuse
        self.stats = CacheStats()
        self._made_dir = False
        self._write_failed = False

    def _names(self, start: int, stop: int) -> tuple[Location, Location]:
        stem = f"rows-{start:012d}-{stop:012d}"
        return self.dir.child(stem + ".arrow"), self.dir.child(stem + ".json")

    def load(self, start: int, stop: int, row_ids_B: np.ndarray, device_type: str
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
        """The cached ``(log_probs_B_K_C, embeddings_B_E | None, loss_B | None)`` of pool rows ``[start, stop)``,
        or None when there is no valid cache for them (the reason is logged and kept)."""
        if not self.reuse:
            return None
        data, meta = self._names(start, stop)
        if self.dir.fs.get_file_info(meta.path).type != pafs.FileType.File:
            return None
        try:
            out = self._load_checked(data, meta, start, stop, row_ids_B, device_type)
        except Exception as exc:  # any damage: a truncated file, bad JSON, wrong type ...
            out = f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        if isinstance(out, str):
            logger.warning("cache %s: %s; scoring rows [%d, %d) again", data.display, out, start, stop)
            self.stats.rejected.append({"rows": [start, stop], "file": data.display, "reason": out})
            return None
        self.stats.reused.append([start, stop])
        return out

    def _load_checked(self, data: Location, meta: Location, start: int, stop: int, row_ids_B: np.ndarray,
                      device_type: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | str:
        with self.dir.fs.open_input_stream(meta.path) as fh:
            rec = json.loads(fh.read().decode())
        if rec.get("fingerprint") != self.record["sha256"]:
            return "made by another pool, model, seed or version (fingerprint differs)"
        if rec.get("rows") != [start, stop]:
            return f"its record names rows {rec.get('rows')}"
        if rec.get("device_type") != device_type:
            return f"scored on {rec.get('device_type')}, this worker scores on {device_type}"
        info = self.dir.fs.get_file_info(data.path)
        if info.type != pafs.FileType.File:
            return "its Arrow file is missing"
        if info.size != rec.get("bytes"):
            return f"size {info.size} bytes, its record says {rec.get('bytes')} (truncated or altered)"
        if _sha256_file(self.dir.fs, data.path) != rec.get("sha256"):
            return "sha256 differs from its record (altered)"
        with self.dir.fs.open_input_file(data.path) as fh:
            table = ipc.open_file(fh).read_all()
        ids = table.column("row_id").to_numpy()
        if ids.shape != row_ids_B.shape or not np.array_equal(ids, row_ids_B):
            return "its row ids are not the pool's rows in this range (the pool changed)"
        k, c = int(rec["n_samples"]), int(rec["n_classes"])
        lp = np.asarray(table.column("log_probs").combine_chunks().flatten().to_numpy(), np.float32)
        log_probs = lp.reshape(len(ids), k, c).copy()
        emb = None
        if rec.get("embedding_dim"):
            e = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(), np.float32)
            emb = e.reshape(len(ids), int(rec["embedding_dim"])).copy()
        loss = np.asarray(table.column("loss").to_numpy(), np.float32).copy() if "loss" in table.column_names \
            else None
        return log_probs, emb, loss

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
            "job": self.record,
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
