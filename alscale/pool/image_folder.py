"""A ``path`` pool from a folder of images (``ROOT/<class>/<file>``, ImageNet's layout).

Lists the image files under ``ROOT`` (a local folder or a ``pyarrow.fs`` URI such as
``s3://bucket/imagenet/train``) in sorted order and writes ``row_id`` 0..N-1, ``path``
(absolute, or the URI) and ``label`` = the index of the file's first folder among the
sorted class folders (omitted when the images are not in class folders). The class names
are kept in the schema metadata (``alscale.classes``, JSON). Only paths are written; the
workers read and decode the images.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa
import pyarrow.fs as pafs

from alscale.errors import PoolError
from alscale.pool.info import PoolInfo, open_pool
from alscale.pool.location import is_uri, resolve
from alscale.pool.write import write_table

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def image_folder_pool(out: str, root: str, *, format: str | None = None) -> PoolInfo:
    loc = resolve(root)
    info = loc.fs.get_file_info(loc.path)
    if info.type != pafs.FileType.Directory:
        raise PoolError(f"images {root}: not a folder; give the folder that holds the class folders")
    entries = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    files = sorted(e.path for e in entries if e.type == pafs.FileType.File and e.path.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise PoolError(f"images {root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found under it")
    base = loc.path.rstrip("/")
    rel = [posixpath.relpath(f, base) if is_uri(loc.canonical) else f[len(base):].lstrip("/\\") for f in files]
    prefix = loc.canonical.rstrip("/")
    paths = [f"{prefix}/{r}" if is_uri(prefix) else f"{prefix}/{r}".replace("\\", "/") for r in rel]
    columns = {"row_id": pa.array(range(len(files)), pa.int64()), "path": pa.array(paths, pa.string())}
    metadata = {}
    folders = [r.replace("\\", "/").split("/")[0] if "/" in r.replace("\\", "/") else None for r in rel]
    if all(f is not None for f in folders):
        classes = sorted(set(folders))
        index = {c: i for i, c in enumerate(classes)}
        columns["label"] = pa.array([index[f] for f in folders], pa.int64())
        metadata = {b"alscale.classes": json.dumps(classes).encode()}
    table = pa.table(columns).replace_schema_metadata(metadata or None)
    write_table(table, out, format=format)
    return open_pool(out)
