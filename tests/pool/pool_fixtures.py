"""Helpers for the pool tests: small pools with known values (imported by the test modules)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alscale.pool import pool_table

SUFFIX = {"ipc": ".arrow", "parquet": ".parquet"}


def known_arrays(n: int, *, dim: int = 3, samples: int = 2, classes: int = 4,
                 emb: int = 5, start_id: int = 1000) -> dict[str, np.ndarray]:
    """Deterministic arrays whose values encode their row (easy to compare exactly)."""
    rows = np.arange(n, dtype=np.float32)[:, None]
    return {
        "row_ids_N": np.arange(start_id, start_id + n, dtype=np.int64) * 7,
        "features_N_D": rows + np.arange(dim, dtype=np.float32) / 10,
        "log_probs_N_K_C": -(rows[:, :, None] + np.arange(samples * classes, dtype=np.float32)
                             .reshape(1, samples, classes) / 100),
        "embeddings_N_D": -rows - np.arange(emb, dtype=np.float32) / 10,
        "labels_N": np.arange(n, dtype=np.int64) % classes,
    }


def known_table(n: int, **kw) -> pa.Table:
    return pool_table(**known_arrays(n, **kw))
