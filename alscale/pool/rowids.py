"""The ``row_id`` invariant: int64, non-null, unique across every file of a pool.

Reads only the ``row_id`` column. Already-increasing ids (the common case, e.g. 0..N-1)
are certified in O(N); otherwise one sort of the N int64 ids finds duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alscale.errors import PoolError
from alscale.pool.datafile import DataFile
from alscale.pool.schema import ROW_ID


def _file_row_ids(f: DataFile) -> np.ndarray:
    """All row ids of one file as int64 ``[n]`` (a PoolError at the first null)."""
    col = f.read_column(ROW_ID)
    if col.null_count:
        offset = 0
        for chunk in col.chunks:
            if chunk.null_count:
                bad = int(np.flatnonzero(~chunk.is_valid().to_numpy(zero_copy_only=False))[0])
                raise PoolError(f"pool {f.where}: column 'row_id' is null at row {offset + bad}; "
                                "give every row a unique int64 id")
            offset += len(chunk)
    if col.num_chunks == 1:
        return col.chunk(0).to_numpy(zero_copy_only=True)
    if col.num_chunks == 0:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([c.to_numpy(zero_copy_only=True) for c in col.chunks])


def check_row_ids(files: Sequence[DataFile], where: str) -> None:
    """Raise a PoolError naming the value and both row positions of the first duplicate.

    ``where`` is the pool as shown in messages; positions are 0-based rows of the pool.
    """
    parts = [_file_row_ids(f) for f in files]
    ids_N = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if ids_N.size < 2 or bool(np.all(ids_N[1:] > ids_N[:-1])):
        return
    sorted_N = np.sort(ids_N, kind="stable")
    dup = np.flatnonzero(sorted_N[1:] == sorted_N[:-1])
    if dup.size == 0:
        return
    value = int(sorted_N[dup[0]])
    first, second = (int(i) for i in np.flatnonzero(ids_N == value)[:2])
    starts = np.cumsum([0] + [p.size for p in parts])

    def at(row: int) -> str:
        if len(files) == 1:
            return f"row {row}"
        i = int(np.searchsorted(starts, row, side="right") - 1)
        return f"row {row} ({files[i].where}, row {row - int(starts[i])} of that file)"

    raise PoolError(f"pool {where}: column 'row_id' has duplicate value {value} at "
                    f"{at(first)} and {at(second)}; make row_id unique (one id per row)")
