"""Read one shard (a contiguous row range) of a pool into numpy arrays.

A range inside one memory-mapped IPC record batch comes back as zero-copy, read-only
float32 views; a range spanning several batches / row groups / files is concatenated into
one fresh array per column. Parquet reads fetch only the row groups that overlap the range.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from alscale.errors import PoolError
from alscale.pool.arrays import first_null_row, vectors_to_numpy
from alscale.pool.datafile import DataFile
from alscale.pool.info import open_files
from alscale.pool.location import one_line
from alscale.pool.schema import DATA_COLUMNS, EMBEDDING, FEATURES, LABEL, LOG_PROBS, ROW_ID
from alscale.types import ShardData, ShardSpec

log = logging.getLogger(__name__)

_FINITE_BLOCK_ELEMENTS = 1 << 22  # bound the temporary mask of the finiteness check
_SHARD_FIELD = {FEATURES: "features_N_D", LOG_PROBS: "log_probs_N_K_C",
                EMBEDDING: "embeddings_N_D", LABEL: "labels_N"}


def _pieces_for(f: DataFile, lo: int, hi: int) -> tuple[list[int], int]:
    """Pieces of ``f`` overlapping its local rows ``[lo, hi)`` and the first piece's start row."""
    bounds = np.concatenate([[0], np.cumsum(f.piece_rows, dtype=np.int64)])
    first = int(np.searchsorted(bounds, lo, side="right") - 1)
    last = int(np.searchsorted(bounds, hi, side="left"))  # exclusive piece index
    return list(range(first, max(last, first + 1))), int(bounds[first])


def _read_range(files: Sequence[DataFile], start: int, stop: int,
                columns: list[str]) -> list[tuple[DataFile, pa.Table]]:
    """The rows ``[start, stop)`` of the pool as one sliced table per overlapping file."""
    parts: list[tuple[DataFile, pa.Table]] = []
    file_start = 0
    for f in files:
        file_stop = file_start + f.n_rows
        lo, hi = max(start, file_start), min(stop, file_stop)
        if lo < hi:
            pieces, piece_start = _pieces_for(f, lo - file_start, hi - file_start)
            table = f.read_pieces(pieces, columns)
            parts.append((f, table.slice(lo - file_start - piece_start, hi - lo)))
        file_start = file_stop
        if file_start >= stop:
            break
    return parts


def _chunks(parts: list[tuple[DataFile, pa.Table]], name: str) -> list[tuple[DataFile, pa.Array]]:
    return [(f, chunk) for f, t in parts for chunk in t.column(name).chunks if len(chunk)]


def _row_ids(parts: list[tuple[DataFile, pa.Table]], start: int) -> np.ndarray:
    """``row_id`` of the range as int64 ``[N]`` (a view when it is one chunk)."""
    chunks = _chunks(parts, ROW_ID)
    views, offset = [], start
    for f, chunk in chunks:
        if chunk.null_count:
            bad = first_null_row(chunk)
            raise PoolError(f"pool {f.where}: column 'row_id' is null at pool row {offset + bad}; "
                            "give every row a unique int64 id")
        views.append(chunk.to_numpy(zero_copy_only=True))
        offset += len(chunk)
    if len(views) == 1:
        return views[0]
    if not views:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(views)


def _column(parts: list[tuple[DataFile, pa.Table]], name: str, ids_N: np.ndarray,
            tail: tuple[int, ...]) -> np.ndarray:
    """One data column as ``[N, *tail]`` (float32, or int64 for labels)."""
    dtype = np.int64 if name == LABEL else np.float32
    views, offset = [], 0
    for f, chunk in _chunks(parts, name):
        bad = first_null_row(chunk) if chunk.null_count or name != LABEL else None
        if bad is not None:
            raise PoolError(f"pool {f.where}: column '{name}' is null at row_id "
                            f"{int(ids_N[offset + bad])}; fill or drop that row")
        if name == LABEL:
            view = chunk.to_numpy(zero_copy_only=True)
        else:
            try:
                view = vectors_to_numpy(chunk).reshape(len(chunk), *tail)  # [N, C] -> [N, 1, C]
            except ValueError as exc:  # buffers shorter than the schema says: a damaged file
                if isinstance(exc, PoolError):
                    raise
                raise PoolError(f"pool {f.where}: column '{name}' near row_id {int(ids_N[offset])} has data that "
                                f"does not match its type ({one_line(exc)}); the file is corrupt, rewrite it "
                                "with alscale.pool.write_table") from None
        views.append(view)
        offset += len(chunk)
    if len(views) == 1 and views[0].dtype == dtype:
        return views[0]
    out = np.empty((ids_N.shape[0], *tail), dtype=dtype)
    row = 0
    for view in views:
        out[row:row + view.shape[0]] = view  # casts float16/float64/int32 labels
        row += view.shape[0]
    return out


def first_nonfinite_row(x: np.ndarray, *, allow_neg_inf: bool = False) -> int | None:
    """Index of the first row of ``x`` (``[N, ...]`` float) with a NaN or inf, or ``None``.

    ``allow_neg_inf`` accepts -inf (a log-probability of exactly 0). Works in blocks so
    the temporary mask stays small.
    """
    if x.size == 0:
        return None
    flat = x.reshape(x.shape[0], -1)
    step = max(1, _FINITE_BLOCK_ELEMENTS // flat.shape[1])
    for s in range(0, flat.shape[0], step):
        block = flat[s:s + step]
        ok = np.isfinite(block)
        if allow_neg_inf and not ok.all():
            ok |= block == -np.inf
        if not ok.all():
            return s + int(np.argmin(ok.all(axis=1)))
    return None


def _check_finite(name: str, x: np.ndarray, ids_N: np.ndarray,
                  where_of_row: Callable[[int], str]) -> None:
    """A PoolError naming the file, column, value and row_id of the first non-finite row.

    In ``log_probs`` -inf is valid (a probability of exactly 0); NaN and +inf are not.
    """
    allow = name == LOG_PROBS
    row = first_nonfinite_row(x, allow_neg_inf=allow)
    if row is None:
        return
    values = x[row].reshape(-1)
    bad = ~np.isfinite(values)
    if allow:
        bad &= values != -np.inf
    value = values[bad][0]
    fix = "clean or drop that row"
    raise PoolError(f"pool {where_of_row(row)}: column '{name}' has a non-finite value "
                    f"({value}) at row_id {int(ids_N[row])}; {fix}")


#: How far a row's probabilities may sum from 1 (float32 log-softmax output is within ~1e-6).
NORMALISATION_TOLERANCE = 1e-3


def first_unnormalised(log_probs_N_K_C: np.ndarray) -> tuple[int, int, float] | None:
    """``(row, sample, sum of probabilities)`` of the first ``[C]`` vector whose probabilities
    do not sum to 1 within :data:`NORMALISATION_TOLERANCE`, or ``None``. Works in blocks."""
    n, k, c = log_probs_N_K_C.shape
    step = max(1, _FINITE_BLOCK_ELEMENTS // max(1, k * c))
    for s in range(0, n, step):
        block = log_probs_N_K_C[s:s + step].astype(np.float64)
        top = block.max(axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        sums = np.exp(block - top).sum(axis=-1) * np.exp(top[..., 0])
        bad = np.abs(sums - 1.0) > NORMALISATION_TOLERANCE
        if bad.any():
            row, sample = np.argwhere(bad)[0]
            return s + int(row), int(sample), float(sums[row, sample])
    return None


def _check_normalised(x: np.ndarray, ids_N: np.ndarray, where_of_row: Callable[[int], str]) -> None:
    found = first_unnormalised(x)
    if found is None:
        return
    row, sample, total = found
    raise PoolError(f"pool {where_of_row(row)}: column 'log_probs' at row_id {int(ids_N[row])}"
                    f"{f' sample {sample}' if x.shape[1] > 1 else ''} has probabilities summing to {total:.6g}, "
                    "not 1; store natural-log probabilities (log_softmax of the logits), not logits or scores")


def read_shard(spec: ShardSpec, columns: Sequence[str] = (), *,
               check_finite: bool = True, check_normalised: bool = False) -> ShardData:
    """Rows ``[spec.start, spec.stop)`` of ``spec.pool``.

    ``row_ids_N`` (int64 ``[N]``) always; ``columns`` picks from ``features``
    (``[N, D]``), ``log_probs`` (``[N, K, C]``, K = 1 for a flat column), ``embedding``
    (``[N, E]``) and ``label`` (int64 ``[N]``). Float columns are float32. With
    ``check_finite`` a NaN/inf in a float column raises a PoolError naming the row_id; with
    ``check_normalised`` so do log-probabilities that do not sum to 1 (what a job needs;
    the reader itself also serves arbitrary float columns).
    """
    wanted = [columns] if isinstance(columns, str) else list(dict.fromkeys(columns))
    unknown = [c for c in wanted if c not in DATA_COLUMNS]
    if unknown:
        raise PoolError(f"pool {spec.pool}: cannot read column '{unknown[0]}'; read_shard "
                        f"columns are a subset of {', '.join(DATA_COLUMNS)} "
                        "(row_id is always read)")
    pool = open_files(spec.pool)
    present = pool.files[0].schema.names
    for c in wanted:
        if c not in present:
            raise PoolError(f"pool {pool.display}: column '{c}' was requested but is missing "
                            f"(columns present: {', '.join(present)}); add it to the pool or "
                            "do not request it")
    n_rows = sum(f.n_rows for f in pool.files)
    if not 0 <= spec.start <= spec.stop <= n_rows:
        raise PoolError(f"pool {pool.display}: shard {spec.index} rows [{spec.start}, {spec.stop}) "
                        f"are outside the pool's {n_rows} rows; re-plan with plan_shards")

    parts = _read_range(pool.files, spec.start, spec.stop, [ROW_ID, *wanted])
    ids_N = _row_ids(parts, spec.start)
    lay = pool.layout
    tails = {FEATURES: (lay.feature_dim,), LOG_PROBS: (lay.n_samples, lay.n_classes),
             EMBEDDING: (lay.embedding_dim,), LABEL: ()}
    bounds = np.cumsum([0] + [t.num_rows for _, t in parts])

    def where_of_row(row: int) -> str:
        return parts[int(np.searchsorted(bounds, row, side="right") - 1)][0].where

    out: dict[str, np.ndarray] = {}
    for name in wanted:
        x = _column(parts, name, ids_N, tails[name])
        if check_finite and name != LABEL:
            _check_finite(name, x, ids_N, where_of_row)
            if name == LOG_PROBS and check_normalised:
                _check_normalised(x, ids_N, where_of_row)
        out[_SHARD_FIELD[name]] = x
    log.debug("read shard %d of %s: rows [%d, %d), columns %s", spec.index, pool.display,
              spec.start, spec.stop, wanted)
    return ShardData(row_ids_N=ids_N, **out)


def read_media(spec: ShardSpec, column: str) -> pa.Array:
    """The ``image`` (binary) or ``path`` (string) values of rows ``[spec.start, spec.stop)``,
    as one Arrow array (zero-copy slices of the files where the format allows)."""
    pool = open_files(spec.pool)
    if pool.layout.media != column:
        raise PoolError(f"pool {pool.display}: column '{column}' was requested but the pool's image source is "
                        f"{pool.layout.media!r}; use that column")
    parts = _read_range(pool.files, spec.start, spec.stop, [column])
    chunks = [c for _, t in parts for c in t.column(column).chunks]
    return pa.concat_arrays(chunks) if chunks else pa.array([], pool.files[0].schema.field(column).type)
