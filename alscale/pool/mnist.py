"""Import MNIST (idx files) as a pool: 784 float32 pixels in [0, 1] and an int64 label."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np

from alscale.errors import PoolError
from alscale.pool.arrays import pool_table
from alscale.pool.info import PoolInfo, open_pool
from alscale.pool.location import choose_format
from alscale.pool.write import write_table

log = logging.getLogger(__name__)

_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_SPLITS = {"train": "train", "test": "t10k"}  # file name prefix per split


def default_mnist_dirs() -> list[Path]:
    """Where MNIST is looked for, in order.

    ``$ALSCALE_MNIST_DIR``, ``<repo root>/../shared/data/mnist``, ``/work/shared/data/mnist``
    (the repo root is the parent of the ``alscale`` package).
    """
    repo_root = Path(__file__).resolve().parents[2]
    env = os.environ.get("ALSCALE_MNIST_DIR")
    dirs = [Path(env)] if env else []
    return dirs + [repo_root.parent / "shared" / "data" / "mnist", Path("/work/shared/data/mnist")]


def _find_source(source: str | None) -> Path:
    if source is not None:
        path = Path(source)
        if not path.is_dir():
            raise PoolError(f"mnist {source}: no such directory; point source at the folder "
                            "holding train-images.idx3-ubyte etc.")
        return path
    tried = default_mnist_dirs()
    if os.environ.get("ALSCALE_MNIST_DIR"):
        env = tried[0]
        if not env.is_dir():
            raise PoolError(f"mnist {env}: ALSCALE_MNIST_DIR is not a directory; fix or unset it")
        return env
    for path in tried:
        if path.is_dir():
            return path
    raise PoolError(f"mnist: no MNIST directory found (tried {', '.join(map(str, tried))}); "
                    "set ALSCALE_MNIST_DIR or pass source=")


def _idx_file(folder: Path, prefix: str, kind: str) -> Path:
    """``<prefix>-<kind>.idx?-ubyte`` (also the ``-idx?-ubyte`` and ``.gz`` spellings)."""
    ndim = 3 if kind == "images" else 1
    for name in (f"{prefix}-{kind}.idx{ndim}-ubyte", f"{prefix}-{kind}-idx{ndim}-ubyte"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise PoolError(f"mnist {folder}: {prefix}-{kind}.idx{ndim}-ubyte is missing; download the "
                    "MNIST idx files into that folder")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file of unsigned bytes as a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise PoolError(f"mnist {path}: cannot read it ({exc}); re-download the file") from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        shown = "none" if found is None else f"0x{found:08x}"
        raise PoolError(f"mnist {path}: bad idx magic number {shown} (expected 0x{magic:08x}); "
                        "the file is not an MNIST idx file of that kind -- re-download it")
    if len(data) < header:
        raise PoolError(f"mnist {path}: truncated idx header; re-download the file")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise PoolError(f"mnist {path}: holds {len(data) - header} bytes of data but its header "
                        f"declares shape {shape} ({size} bytes); re-download the file")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def gray_png(image_H_W: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of ``image_H_W`` (uint8), written with the standard library
    (zlib + CRC chunks, filter 0 on every scanline) so the pool package needs no imaging library."""
    import struct
    import zlib

    h, w = image_H_W.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + image_H_W[row].astype(np.uint8).tobytes() for row in range(h))
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, grayscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def mnist_pool(out: str, *, source: str | None = None, split: str = "train",
               format: str | None = None, images: bool = False, rows: int | None = None) -> PoolInfo:
    """Write MNIST ``split`` ("train": 60,000 rows, "test": 10,000) as a pool at ``out``.

    Columns: ``row_id`` 0..N-1, ``features`` [784] float32 = pixels / 255, ``label`` int64.
    With ``images`` an ``image`` column of PNG bytes (8-bit grayscale, 28 x 28) replaces
    ``features``: a raw-image pool whose builtin ``pixels`` transform gives the same
    features. ``rows`` keeps the first rows only. ``format`` defaults to the suffix of ``out``.
    """
    if split not in _SPLITS:
        raise PoolError(f"mnist: unknown split {split!r}; use 'train' or 'test'")
    fmt = choose_format(out, format)
    folder = _find_source(source)
    prefix = _SPLITS[split]
    images_path = _idx_file(folder, prefix, "images")
    labels_path = _idx_file(folder, prefix, "labels")
    images_N_H_W = read_idx(images_path, _IMAGES_MAGIC)
    labels_N = read_idx(labels_path, _LABELS_MAGIC)
    if images_N_H_W.shape[0] != labels_N.shape[0]:
        raise PoolError(f"mnist {labels_path}: {labels_N.shape[0]} labels for "
                        f"{images_N_H_W.shape[0]} images in {images_path.name}; re-download both")
    if labels_N.size and int(labels_N.max()) > 9:
        raise PoolError(f"mnist {labels_path}: label {int(labels_N.max())} is not a digit 0..9; "
                        "re-download the file")
    if rows is not None:
        if rows < 1:
            raise PoolError(f"mnist: rows must be >= 1, got {rows}")
        images_N_H_W, labels_N = images_N_H_W[:rows], labels_N[:rows]
    n = images_N_H_W.shape[0]
    if images:
        import pyarrow as pa

        table = pool_table(np.arange(n, dtype=np.int64), labels_N=labels_N.astype(np.int64))
        table = table.append_column("image", pa.array([gray_png(a) for a in images_N_H_W], pa.binary()))
    else:
        features_N_D = images_N_H_W.reshape(n, -1).astype(np.float32) / np.float32(255.0)
        table = pool_table(np.arange(n, dtype=np.int64), features_N_D=features_N_D,
                           labels_N=labels_N.astype(np.int64))
    write_table(table, out, format=fmt)
    log.info("mnist %s: wrote %d rows from %s to %s", split, n, folder, out)
    return open_pool(out)
