"""Open a pool: resolve its files, check the schema and row ids, summarise it as PoolInfo."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from alscale.pool.datafile import DataFile, open_data_files
from alscale.pool.location import list_data_files, resolve
from alscale.pool.rowids import check_row_ids as verify_row_ids
from alscale.pool.schema import ColumnLayout, check_same_layout, column_layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolInfo:
    """What a pool holds (no data).

    ``path`` is canonical: an absolute local path or the URI, so a ShardSpec built from it
    opens from any working directory (e.g. a Ray worker). ``n_samples`` is K of
    ``log_probs`` (1 for a list<float>[C] column); dims are ``None`` when the column is
    absent. ``files`` / ``file_rows`` list the data files (canonical) in read order.
    """

    path: str
    format: str  # "ipc" | "parquet"
    n_rows: int
    columns: tuple[str, ...]
    feature_dim: int | None
    n_classes: int | None
    n_samples: int | None
    embedding_dim: int | None
    has_label: bool
    files: tuple[str, ...]
    file_rows: tuple[int, ...]
    media: str | None = None  # "image" / "path": raw images decoded by the workers


@dataclass
class OpenedPool:
    """A pool's open data files and their common column layout (used by the readers)."""

    display: str
    canonical: str
    fmt: str
    files: list[DataFile]
    layout: ColumnLayout


def open_files(path: str) -> OpenedPool:
    """Resolve ``path``, open every data file and check the schemas agree (reads no data)."""
    loc = resolve(path)
    fmt, locs = list_data_files(loc)
    files = open_data_files(locs, fmt)
    layout = column_layout(files[0].schema, files[0].where)
    for f in files[1:]:
        check_same_layout(layout, files[0].where, column_layout(f.schema, f.where), f.where)
    return OpenedPool(loc.display, loc.canonical, fmt, files, layout)


def open_pool(path: str, *, check_row_ids: bool = True) -> PoolInfo:
    """Validate the pool at ``path`` (file, directory dataset or URI) and describe it.

    Checks the type of every known column in every file and that the files agree on
    dimensions. With ``check_row_ids`` also reads the ``row_id`` column and checks it is
    non-null and unique (presence and int64 type are always checked). Raises
    :class:`alscale.errors.PoolError` with a one-line message naming the culprit.
    """
    pool = open_files(path)
    if check_row_ids:
        verify_row_ids(pool.files, pool.display)
    lay = pool.layout
    info = PoolInfo(
        path=pool.canonical,
        format=pool.fmt,
        n_rows=sum(f.n_rows for f in pool.files),
        columns=tuple(pool.files[0].schema.names),
        feature_dim=lay.feature_dim,
        n_classes=lay.n_classes,
        n_samples=lay.n_samples,
        embedding_dim=lay.embedding_dim,
        has_label=lay.has_label,
        files=tuple(f.loc.canonical for f in pool.files),
        file_rows=tuple(f.n_rows for f in pool.files),
        media=lay.media,
    )
    log.debug("opened pool %s: %d rows in %d %s file(s)", info.path, info.n_rows,
              len(info.files), info.format)
    return info


def describe_pool(info: PoolInfo) -> str:
    """A multi-line human summary (for ``alscale pool info POOL``)."""

    def dim(value: int | None, text: str) -> str:
        return "-" if value is None else text

    lines = [
        f"pool       {info.path}",
        f"format     {'Arrow IPC' if info.format == 'ipc' else 'Parquet'} "
        f"({len(info.files)} file{'s' if len(info.files) != 1 else ''})",
        f"rows       {info.n_rows:,}",
        f"columns    {', '.join(info.columns)}",
        f"features   {dim(info.feature_dim, f'[{info.feature_dim}] float32')}",
        "log_probs  " + dim(info.n_classes, f"[{info.n_samples} x {info.n_classes}] "
                                            f"(K={info.n_samples} sample"
                                            f"{'s' if info.n_samples != 1 else ''}, "
                                            f"C={info.n_classes} classes)"),
        f"embedding  {dim(info.embedding_dim, f'[{info.embedding_dim}] float32')}",
        f"label      {'yes' if info.has_label else '-'}",
        f"images     {info.media or '-'}",
    ]
    if len(info.files) > 1:
        shown = list(zip(info.files, info.file_rows))
        head = shown[:5]
        lines.append("files")
        lines += [f"  {name}  ({rows:,} rows)" for name, rows in head]
        if len(shown) > len(head):
            lines.append(f"  ... and {len(shown) - len(head)} more")
    return "\n".join(lines)
