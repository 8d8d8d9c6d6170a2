"""Near-duplicate groups over the sharded neighbour layer (what FiftyOne Brain's
``compute_near_duplicates`` and Lightly's deduplication do, at pool scale).

Two rows are near-duplicates when ``‖x − x'‖ <= threshold`` (on L2-normalised rows with
``normalize``); groups are the connected components of that graph (single linkage), each
named by its lowest ``row_id``, which is the row kept. Every shard indexes its rows; the
pool streams through in chunks, and each chunk's range search gives its pairs
(:mod:`alscale.strategies.neighbour_ops`). ``mode: exact`` finds every pair (canonical
float64 decisions, the same for any sharding); ``approx_*`` modes may miss pairs.

Per row: ``n_within`` (other rows within the threshold) and ``uniqueness =
1 / (1 + n_within)`` (1: no near-duplicate), usable as a strategy input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from alscale.strategies import neighbour_ops
from alscale.strategies.shards import Shards, ShardState, shard_op

_OP = "alscale.strategies.dedup."
_KEY = "dedup"


@dataclass
class DedupResult:
    row_ids_N: np.ndarray  # every row, in pool order
    group_N: np.ndarray  # the lowest row_id of the row's group (itself when unique)
    n_within_N: np.ndarray  # other rows within the threshold
    n_pairs: int

    @property
    def keep_N(self) -> np.ndarray:
        return self.group_N == self.row_ids_N

    @property
    def uniqueness_N(self) -> np.ndarray:
        return 1.0 / (1.0 + self.n_within_N)


class ChunkRows(NamedTuple):
    """Rows ``[start, stop)`` of one shard: ids and (normalised) embeddings."""

    row_ids_M: np.ndarray
    x_M_D: np.ndarray


@shard_op(mutates=False)
def dd_chunk(state: ShardState, start: int, stop: int, normalize: bool) -> ChunkRows:
    x = state.embeddings_N_D[start:stop]
    x = neighbour_ops.normalized(x) if normalize else np.asarray(x, dtype=np.float32)
    return ChunkRows(state.row_ids_N[start:stop], x)


@shard_op(mutates=False)
def dd_size(state: ShardState) -> int:
    return int(state.row_ids_N.shape[0])


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the graph on ``0..n-1`` with edges ``(a, b)``: each node's
    label is the lowest node of its component (min-label propagation with pointer jumping)."""
    lab = np.arange(n, dtype=np.int64)
    if a.size == 0:
        return lab
    while True:
        m = np.minimum(lab[a], lab[b])
        new = lab.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]  # pointer jumping
        while True:
            nn = new[new]
            if np.array_equal(nn, new):
                break
            new = nn
        if np.array_equal(new, lab):
            return lab
        lab = new


def near_duplicates(shards: Shards, threshold: float, *, mode: str = "exact", normalize: bool = False,
                    chunk_rows: int = 16384, params: dict | None = None) -> DedupResult:
    """Near-duplicate groups of every row of the shards (module doc)."""
    neighbour_ops.build(shards, _KEY, mode, params=params, rows="all", normalize=normalize)
    sizes = [int(v) for v in shards.call(_OP + "dd_size")]
    ids_parts, a_parts, b_parts, cnt_parts = [], [], [], []
    r2 = float(threshold) ** 2
    try:
        for s, n in enumerate(sizes):
            for start in range(0, n, chunk_rows):
                args = [(start, min(n, start + chunk_rows), normalize) if t == s else (0, 0, normalize)
                        for t in range(len(sizes))]
                ids, x = shards.call_each(_OP + "dd_chunk", args)[s]
                lims, _, nb = neighbour_ops.range_search(shards, _KEY, x, r2, strict=False)
                q = np.repeat(ids, np.diff(lims))
                other = nb != q
                ids_parts.append(ids)
                cnt_parts.append(np.bincount(np.repeat(np.arange(ids.shape[0]), np.diff(lims))[other],
                                             minlength=ids.shape[0]))
                a_parts.append(q[other])  # both directions (an approximate index may find one)
                b_parts.append(nb[other])
    finally:
        neighbour_ops.drop(shards, _KEY)
    row_ids = np.concatenate(ids_parts)
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    order = np.argsort(row_ids, kind="stable")
    srt = row_ids[order]
    ia, ib = order[np.searchsorted(srt, a)], order[np.searchsorted(srt, b)]
    # components on positions sorted by row id, so the lowest position is the lowest row id
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    lab = components(row_ids.shape[0], rank[ia], rank[ib])
    group = srt[lab[rank]]
    return DedupResult(row_ids, group, np.concatenate(cnt_parts).astype(np.int64),
                       int(np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)]), axis=1).shape[1]) if a.size else 0)
