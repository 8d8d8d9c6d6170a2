"""SEALS with a kept neighbour structure (Coleman et al., AAAI 2022, §3: "the kNN index is
updated as examples are labelled"): a round searches only for its new labels.

What is kept, per labelled row: its ``keep`` (= ``keep_factor · k``) nearest rows that were
unlabelled when it was searched, sorted by ``(d2, row_id)``. Labels only grow, so the rows
unlabelled now are a subset of those unlabelled then, and the kept list with the newly
labelled rows removed is a prefix of the row's order over today's unlabelled rows: its
first ``k`` entries are exactly today's ``k`` nearest unlabelled rows whenever at least
``k`` remain. Rows left with fewer are searched again; rows labelled since the structure
was kept are searched for the first time. In ``exact`` mode the candidate set is therefore
identical to a from-scratch exact SEALS; ``approx_*`` modes search with FAISS indexes per
shard (:mod:`alscale.index.neighbours`), approximate by name.

The structure is refused (and rebuilt) when it does not describe this pool: another ``k``,
mode or keep, a kept labelled row no longer labelled, or different embeddings of the kept
rows (a SHA-256 of their float32 bytes). Storage is the caller's (see
:mod:`alscale.runtime.seals_store`); this module is pure.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from alscale.strategies.seals import labeled_rows, unlabeled_knn
from alscale.strategies.shards import Shards

logger = logging.getLogger(__name__)


@dataclass
class KeptNeighbours:
    """Per labelled row (sorted ids), its kept nearest unlabelled rows (padded with -1 / inf)."""

    labeled_ids_L: np.ndarray
    nbr_ids_L_K: np.ndarray
    nbr_d2_L_K: np.ndarray
    k: int
    keep: int
    mode: str
    emb_sha256: str

    def meta(self) -> dict[str, Any]:
        return {"k": self.k, "keep": self.keep, "mode": self.mode, "emb_sha256": self.emb_sha256,
                "n_labeled": int(self.labeled_ids_L.shape[0])}


def _sha(emb_L_D: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(emb_L_D, dtype=np.float32).tobytes()).hexdigest()


def seals_with_kept(shards: Shards, k: int, kept: KeptNeighbours | None, *, mode: str = "exact",
                    keep_factor: int = 2) -> tuple[np.ndarray, KeptNeighbours, dict[str, Any]]:
    """SEALS candidates (sorted row ids) using and updating ``kept``; returns them, the new
    structure and a summary (searched rows, reused rows, why a structure was refused)."""
    keep = int(k) * int(keep_factor)
    ids, emb = labeled_rows(shards)
    L = ids.shape[0]
    nbr_i = np.full((L, keep), -1, dtype=np.int64)
    nbr_d = np.full((L, keep), np.inf)
    search = np.ones(L, dtype=bool)
    refused = None
    if kept is not None:
        pos = np.searchsorted(ids, kept.labeled_ids_L)
        pos_ok = pos < L
        if (kept.k, kept.keep, kept.mode) != (int(k), keep, mode):
            refused = f"kept for k={kept.k}, keep={kept.keep}, mode={kept.mode}"
        elif not (pos_ok.all() and np.array_equal(ids[np.minimum(pos, L - 1)], kept.labeled_ids_L)):
            refused = "a kept labelled row is no longer labelled"
        elif _sha(emb[pos]) != kept.emb_sha256:
            refused = "the kept rows' embeddings differ (another pool or model)"
        else:
            ki, kd = kept.nbr_ids_L_K.copy(), kept.nbr_d2_L_K.copy()
            now_labeled = np.isin(ki, ids)
            ki[now_labeled] = -1
            kd[now_labeled] = np.inf
            # compact each row: valid entries first, order kept (stable on the validity key)
            oo = np.argsort(ki < 0, axis=1, kind="stable")
            ki, kd = np.take_along_axis(ki, oo, 1), np.take_along_axis(kd, oo, 1)
            enough = (ki >= 0).sum(axis=1) >= k
            nbr_i[pos], nbr_d[pos] = ki, kd
            search[pos[enough]] = False
        if refused:
            logger.info("SEALS: kept neighbours refused (%s); searching every labelled row", refused)
    q_pos = np.flatnonzero(search)
    d, i = unlabeled_knn(shards, emb[q_pos], keep, mode)
    nbr_i[q_pos], nbr_d[q_pos] = i, d
    first = nbr_i[:, :k]
    cand = np.unique(first[first >= 0])
    new = KeptNeighbours(ids, nbr_i, nbr_d, int(k), keep, mode, _sha(emb))
    info = {"searched": int(q_pos.shape[0]), "reused": int(L - q_pos.shape[0]), "refused": refused,
            "mode": mode, "keep": keep}
    return cand, new, info


def candidates_sha256(cand: np.ndarray) -> str:
    """A digest of a candidate set (sorted int64 row ids) for the manifest."""
    return hashlib.sha256(np.ascontiguousarray(np.sort(cand), dtype=np.int64).tobytes()).hexdigest()
