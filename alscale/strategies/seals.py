"""SEALS candidate filter (Coleman et al., AAAI 2022): only the k nearest neighbours of the
labelled rows are candidates; any strategy then runs on them.

At a million rows and more, most unlabelled rows are far from every labelled one and rarely
informative; SEALS restricts each selection to the union of the ``k`` nearest unlabelled
neighbours (Euclidean, on the embeddings) of every labelled row, which keeps the candidate
set proportional to the labelled set, not the pool. The paper maintains a kNN index as rows
are labelled (:mod:`alscale.strategies.seals_kept` does, across jobs); this module computes
the neighbours of a job's labelled set on the neighbour layer: each shard indexes its
unlabelled rows (:mod:`alscale.index.neighbours`, ``exact``: Voronoi-cell pruned, decided in
canonical float64, ties to the lower ``row_id``) and the coordinator merges the per-shard
top-k exactly, so the candidate set — and the selection — is the same for any sharding.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from alscale.errors import AlscaleError, short_repr
from alscale.strategies import neighbour_ops
from alscale.strategies.shards import Shards, ShardState, shard_op

_OP = "alscale.strategies.seals."
_QUERIES = 4096  # labelled rows per round trip
_KEY = "seals"


class LabeledRows(NamedTuple):
    """A shard's labelled rows: ids and embeddings (float32)."""

    row_ids_L: np.ndarray
    embeddings_L_D: np.ndarray


@shard_op(mutates=False)
def seals_labeled(state: ShardState) -> LabeledRows:
    """This shard's labelled rows."""
    if state.embeddings_N_D is None:
        raise AlscaleError("the SEALS candidate filter needs embeddings, but this shard has none")
    pos = np.flatnonzero(state.labeled_N)
    return LabeledRows(state.row_ids_N[pos], np.asarray(state.embeddings_N_D[pos], dtype=np.float32))


def labeled_rows(shards: Shards) -> tuple[np.ndarray, np.ndarray]:
    """Every labelled row's id and embedding, by ascending ``row_id``: ``(ids_L, emb_L_D)``."""
    parts = shards.call(_OP + "seals_labeled")
    ids = np.concatenate([p.row_ids_L for p in parts])
    emb = np.concatenate([p.embeddings_L_D for p in parts])
    o = np.argsort(ids, kind="stable")
    return ids[o], emb[o]


def unlabeled_knn(shards: Shards, q_Q_D: np.ndarray, k: int, mode: str = "exact"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest unlabelled rows of each query over all shards, ``(d2 [Q, k],
    row_ids [Q, k])`` padded with ``(inf, -1)``: one index per shard over its unlabelled
    rows (``mode`` of :mod:`alscale.index.neighbours`), queried in batches, then dropped."""
    if q_Q_D.shape[0] == 0:
        return np.empty((0, k)), np.empty((0, k), np.int64)
    d_parts, i_parts = [], []
    neighbour_ops.build(shards, _KEY, mode, rows="unlabeled",
                        params={"queries": int(q_Q_D.shape[0])} if mode == "exact" else None)
    try:
        for q0 in range(0, q_Q_D.shape[0], _QUERIES):
            d, i = neighbour_ops.knn(shards, _KEY, q_Q_D[q0:q0 + _QUERIES], k)
            d_parts.append(d)
            i_parts.append(i)
    finally:
        neighbour_ops.drop(shards, _KEY)
    return np.concatenate(d_parts), np.concatenate(i_parts)


def seals_candidates(shards: Shards, k: int) -> np.ndarray:
    """The union of the ``k`` nearest unlabelled rows of every labelled row (sorted row ids)."""
    _, q = labeled_rows(shards)
    if q.shape[0] == 0:
        return np.empty(0, np.int64)
    _, ids = unlabeled_knn(shards, q, int(k))
    return np.unique(ids[ids >= 0])


def apply_seals(shards: Shards, k: int) -> int:
    """Restrict the shards' candidates to :func:`seals_candidates`; returns their number.
    With nothing labelled there are no neighbours: the filter is skipped (returns -1)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise AlscaleError(f"strategy.seals must be a number of neighbours >= 1; got {short_repr(k)}")
    if shards.n_rows() == shards.n_candidates():
        return -1
    cand = seals_candidates(shards, int(k))
    return shards.restrict(cand)
