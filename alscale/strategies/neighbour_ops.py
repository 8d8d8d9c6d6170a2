"""Neighbour search through the shard seam: each shard builds an index over the rows it
holds (:mod:`alscale.index.neighbours`), queries travel to every shard, and the
coordinator merges the per-shard answers exactly (top-k by ``(d2, row_id)``, range results
concatenated), so rows stay where they are and, in ``exact`` mode, the answer does not
depend on the shard count. Approximate modes build one FAISS index per shard: what they
find may depend on the sharding (their names say they are approximate).

Indexes live in the shard's :class:`ShardIndexes` (``strategy_state["neighbours"]``), by
name; ``exclude`` and ``restrict`` clear them with the rest of the strategy state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from alscale.index.neighbours import check_mode, make_index, merge_knn, merge_range
from alscale.strategies.shards import Shards, ShardState, shard_op

_OP = "alscale.strategies.neighbour_ops."


@dataclass
class ShardIndexes:
    """The neighbour indexes built on one shard, by name (:mod:`alscale.index.neighbours`)."""

    by_key: dict[str, Any] = field(default_factory=dict)


class Knn(NamedTuple):
    """One shard's k nearest indexed rows per query: squared distances and row ids, sorted by
    ``(d2, row_id)``, padded with ``(inf, -1)``."""

    d2_Q_K: np.ndarray
    row_ids_Q_K: np.ndarray


class RangeHits(NamedTuple):
    """One shard's rows within a radius of each query, CSR: query ``q``'s hits are
    ``lims_Q1[q]:lims_Q1[q + 1]``, sorted by ``(d2, row_id)``."""

    lims_Q1: np.ndarray
    d2_P: np.ndarray
    row_ids_P: np.ndarray


def _store(state: ShardState) -> dict[str, Any]:
    return state.strategy_state.setdefault("neighbours", ShardIndexes()).by_key


def shard_rows(state: ShardState, rows: str) -> np.ndarray:
    """Positions of this shard's rows in ``rows`` (``all``, ``unlabeled``, ``labeled``, ``candidates``)."""
    if rows == "all":
        return np.arange(state.row_ids_N.shape[0])
    if rows == "unlabeled":
        return np.flatnonzero(~state.labeled_N)
    if rows == "labeled":
        return np.flatnonzero(state.labeled_N)
    if rows == "candidates":
        return np.flatnonzero(state.candidates_N)
    raise ValueError(f"rows must be all, unlabeled, labeled or candidates; got {rows!r}")


def normalized(x_N_D: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float64, then float32 (zero rows stay zero)."""
    x = np.asarray(x_N_D, dtype=np.float64)
    norm = np.sqrt((x * x).sum(axis=1, keepdims=True))
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def build_local(state: ShardState, key: str, x_N_D: np.ndarray, positions: np.ndarray, mode: str,
                params: dict[str, Any] | None = None, seed: int = 0, device: str | None = None) -> int:
    """Build an index named ``key`` over ``x_N_D[positions]`` (ids: the rows' ``row_id``)."""
    if device == "auto":
        from alscale.index import cuda_device

        device = cuda_device()
    x = np.asarray(x_N_D)[positions]
    _store(state)[key] = make_index(mode, x, state.row_ids_N[positions], params=params, device=device, seed=seed)
    return int(positions.shape[0])


def get_local(state: ShardState, key: str):
    try:
        return _store(state)[key]
    except KeyError:
        raise RuntimeError(f"no neighbour index {key!r} on this shard; build it first") from None


@shard_op
def nb_build(state: ShardState, key: str, mode: str, params: dict[str, Any] | None = None, rows: str = "all",
             normalize: bool = False, seed: int = 0, device: str | None = None) -> int:
    """Index this shard's embeddings (``rows`` of them, L2-normalised when asked); returns the count."""
    if state.embeddings_N_D is None:
        raise ValueError("neighbour search needs embeddings, but this shard has none")
    x = normalized(state.embeddings_N_D) if normalize else np.asarray(state.embeddings_N_D, dtype=np.float32)
    return build_local(state, key, x, shard_rows(state, rows), mode, params, seed, device)


@shard_op(mutates=False)
def nb_knn(state: ShardState, key: str, q_Q_D: np.ndarray, k: int, exclude_ids_Q: np.ndarray | None = None
           ) -> Knn:
    return Knn(*get_local(state, key).search(q_Q_D, int(k), exclude_ids_Q=exclude_ids_Q))


@shard_op(mutates=False)
def nb_range(state: ShardState, key: str, q_Q_D: np.ndarray, r2: float, strict: bool = True) -> RangeHits:
    return RangeHits(*get_local(state, key).range_search(q_Q_D, float(r2), strict=strict))


@shard_op
def nb_drop(state: ShardState, key: str) -> None:
    _store(state).pop(key, None)


# -- coordinator side -------------------------------------------------------------------------

def build(shards: Shards, key: str, mode: str, *, params: dict[str, Any] | None = None, rows: str = "all",
          normalize: bool = False, seed: int = 0, device: str | None = None) -> int:
    """Build index ``key`` on every shard (one fan-out); returns the rows indexed."""
    check_mode(mode)
    return int(sum(shards.call(_OP + "nb_build", key, mode, dict(params or {}), rows, bool(normalize), int(seed),
                               device)))


def knn(shards: Shards, key: str, q_Q_D: np.ndarray, k: int, exclude_ids_Q: np.ndarray | None = None
        ) -> tuple[np.ndarray, np.ndarray]:
    """Global ``k`` nearest indexed rows per query: ``(d2 [Q, k], row_ids [Q, k])``, exact merge."""
    q = np.ascontiguousarray(q_Q_D, dtype=np.float32)
    return merge_knn(shards.call(_OP + "nb_knn", key, q, int(k), exclude_ids_Q), int(k))


def range_search(shards: Shards, key: str, q_Q_D: np.ndarray, r2: float, strict: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every indexed row within ``r2`` of each query, over all shards (CSR ``lims, d2, row_ids``)."""
    q = np.ascontiguousarray(q_Q_D, dtype=np.float32)
    return merge_range(shards.call(_OP + "nb_range", key, q, float(r2), bool(strict)))


def drop(shards: Shards, key: str) -> None:
    shards.call(_OP + "nb_drop", key)
