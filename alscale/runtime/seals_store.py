"""Where SEALS keeps its labelled rows' neighbours between rounds: one ``.npz`` file (and a
JSON summary) in ``strategy.seals_index``, a local directory next to the ledger or in the
output tree. Written atomically (temporary file, then rename): a reader sees the old file
or the new one, never half of one. The logic is :mod:`alscale.strategies.seals_kept`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from alscale.errors import AlscaleError
from alscale.strategies.seals_kept import KeptNeighbours, candidates_sha256, seals_with_kept

logger = logging.getLogger(__name__)

FILE = "seals-neighbours.npz"


def load_kept(directory: str) -> KeptNeighbours | None:
    """The kept structure in ``directory``, or None when there is none (first round)."""
    path = Path(directory) / FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return KeptNeighbours(z["labeled_ids"], z["nbr_ids"], z["nbr_d2"], int(meta["k"]), int(meta["keep"]),
                                  str(meta["mode"]), str(meta["emb_sha256"]))
    except (OSError, KeyError, ValueError) as exc:
        logger.warning("SEALS index %s is unreadable (%s); rebuilding it", path, exc)
        return None


def save_kept(directory: str, kept: KeptNeighbours, cand: np.ndarray) -> str:
    """Write the structure and this round's candidate ids; returns the file path."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AlscaleError(f"strategy.seals_index {directory}: cannot create the directory ({exc}); "
                           "give a writable local directory") from None
    path = d / FILE
    tmp = d / (FILE + ".tmp.npz")
    np.savez(tmp, labeled_ids=kept.labeled_ids_L, nbr_ids=kept.nbr_ids_L_K, nbr_d2=kept.nbr_d2_L_K,
             candidates=np.asarray(cand, np.int64), meta=np.array(json.dumps(kept.meta())))
    os.replace(tmp, path)
    return str(path)


def apply_seals_kept(shards: Any, k: int, directory: str | None, mode: str) -> tuple[int, dict[str, Any]]:
    """SEALS with the structure kept in ``directory`` (None: nothing kept, e.g. an approximate
    mode alone); restricts the shards to the candidates. Returns (their number or -1 when
    nothing is labelled, the manifest's summary)."""
    if shards.n_rows() == shards.n_candidates():
        return -1, {"mode": mode}
    kept = load_kept(directory) if directory else None
    cand, new, info = seals_with_kept(shards, int(k), kept, mode=mode)
    if directory:
        info["index_path"] = save_kept(directory, new, cand)
    info["candidates_sha256"] = candidates_sha256(cand)
    return shards.restrict(cand), info
