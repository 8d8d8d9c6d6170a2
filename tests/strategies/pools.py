"""Shared data and helpers of the strategy tests (a small clustered pool split into shards)."""

from __future__ import annotations

import numpy as np

from alscale.strategies import FanoutShards, InProcessFanout, ShardState, clustering
from tests.conftest import log_softmax


def blobs(n: int, d: int, k: int, seed: int = 0, spread: float = 4.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * spread
    return (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


def make_shards(ids, emb, lp=None, n_shards=1, labeled=()):
    bounds = np.linspace(0, ids.shape[0], n_shards + 1).astype(int)
    states = [ShardState(ids[a:b], None if lp is None else lp[a:b], emb[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    shards = FanoutShards(InProcessFanout(states))
    shards.exclude(np.asarray(labeled, np.int64))
    return shards, states


def labels_of(states) -> dict[int, int]:
    return {int(r): int(c) for s in states for r, c in zip(s.row_ids_N, clustering.labels(s))}


def coldstart_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """900 rows in 8 blobs (6-D embeddings), K = 1 log-probs over 5 classes, shuffled row ids."""
    n = 900
    emb = blobs(n, 6, 8, seed=1)
    lp = log_softmax(np.random.default_rng(2).normal(size=(n, 1, 5)) * 2)
    ids = np.random.default_rng(3).permutation(10 * n)[:n].astype(np.int64)
    return ids, emb, lp


def assert_ray_equals_local(data, tmp_path, name, options):
    """A job on 2 shards selects the same rows with the same scores on Ray as locally."""
    from alscale.jobspec import validate_job
    from alscale.pool import pool_table, write_table
    from alscale.runtime.coordinator import run_job

    ids, emb, lp = data
    pool = tmp_path / "pool.arrow"
    write_table(pool_table(ids, log_probs_N_K_C=lp, embeddings_N_D=emb), str(pool))
    out = {}
    for executor in ("local", "ray"):
        job = validate_job({"pool": {"path": str(pool)},
                            "strategy": {"name": name, "budget": 12, "options": options, "quotas": None},
                            "runtime": {"executor": executor, "shards": 2}, "seed": 3})
        out[executor] = run_job(job, out_dir=tmp_path / executor, progress=False).selection
    assert out["ray"].indices_B.tolist() == out["local"].indices_B.tolist()
    np.testing.assert_array_equal(out["ray"].scores_B, out["local"].scores_B)
