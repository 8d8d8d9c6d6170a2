"""``alscale dedup POOL --threshold r --out DIR``: near-duplicate groups and a kept-row mask.

Writes, atomically (temporary name, then rename; nothing is left on error):

- ``DIR/keep.parquet``: ``row_id``, ``keep`` (bool: the lowest row of its group, or unique),
  ``group`` (the lowest ``row_id`` of its group), ``n_within`` and ``uniqueness``, every row;
- ``DIR/groups.parquet``: ``group``, ``row_id`` of the rows in groups of two or more;
- ``DIR/dedup.json``: the command's settings, counts and seconds.

The pool is read in ``--shards`` contiguous shards held in this process (the search is
the sharded neighbour layer of :mod:`alscale.strategies.dedup`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from alscale.errors import AlscaleError


def run_dedup(pool: str, threshold: float, out: str, *, shards: int = 2, mode: str = "exact",
              normalize: bool = False, column: str = "auto", force: bool = False) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from alscale.index.neighbours import check_mode
    from alscale.pool import open_pool, plan_shards, read_shard
    from alscale.strategies import FanoutShards, InProcessFanout, ShardState
    from alscale.strategies.dedup import near_duplicates

    if not (isinstance(threshold, (int, float)) and np.isfinite(threshold) and threshold >= 0):
        raise AlscaleError(f"--threshold must be a finite distance >= 0; got {threshold!r}")
    check_mode(mode, "--mode")
    if shards < 1:
        raise AlscaleError(f"--shards must be >= 1; got {shards}")
    out_dir = Path(out)
    if (out_dir / "keep.parquet").exists() and not force:
        raise AlscaleError(f"{out_dir / 'keep.parquet'} exists; pass --force to overwrite or choose another --out")
    t0 = time.perf_counter()
    info = open_pool(pool)
    col = column
    if col == "auto":
        col = "embedding" if info.embedding_dim is not None else "features"
    if (col == "embedding" and info.embedding_dim is None) or (col == "features" and info.feature_dim is None):
        raise AlscaleError(f"pool {pool} has no '{col}' column; dedup needs 'embedding' or 'features' "
                           "(choose with --column)")
    field = "embeddings_N_D" if col == "embedding" else "features_N_D"
    states = []
    for spec in plan_shards(pool, info.n_rows, shards):
        data = read_shard(spec, [col])
        states.append(ShardState(data.row_ids_N, None, np.asarray(getattr(data, field), dtype=np.float32)))
    t_read = time.perf_counter() - t0
    res = near_duplicates(FanoutShards(InProcessFanout(states)), float(threshold), mode=mode, normalize=normalize)
    t_search = time.perf_counter() - t0 - t_read
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = pa.table({"row_id": res.row_ids_N, "keep": res.keep_N, "group": res.group_N,
                     "n_within": res.n_within_N, "uniqueness": res.uniqueness_N})
    _, counts = np.unique(res.group_N, return_counts=True)
    dup = np.isin(res.group_N, np.unique(res.group_N)[counts > 1])
    o = np.lexsort((res.row_ids_N[dup], res.group_N[dup]))
    groups = pa.table({"group": res.group_N[dup][o], "row_id": res.row_ids_N[dup][o]})
    summary = {"pool": pool, "threshold": float(threshold), "mode": mode, "normalize": normalize, "column": col,
               "shards": len(states), "rows": int(res.row_ids_N.shape[0]), "pairs": res.n_pairs,
               "groups": int((counts > 1).sum()), "rows_in_groups": int(dup.sum()),
               "removed": int((~res.keep_N).sum()), "seconds": {"read": t_read, "search": t_search}}
    for name, table in (("keep.parquet", keep), ("groups.parquet", groups)):
        tmp = out_dir / (name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, out_dir / name)
    tmp = out_dir / "dedup.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out_dir / "dedup.json")
    return summary
