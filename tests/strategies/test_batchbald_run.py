"""BatchBALD as a job: a pool with a log_probs column on disk, local (1, 7 shards) vs Ray (2 shards)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from alscale.jobspec import validate_job
from alscale.pool import pool_table, write_table
from alscale.runtime.coordinator import run_job
from tests.conftest import log_softmax


@pytest.fixture(scope="module")
def bb_pool(tmp_path_factory):
    """1,500 rows, K = 8 MC samples, C = 5, shuffled row ids."""
    rng = np.random.default_rng(3)
    n = 1500
    lp = log_softmax(rng.normal(size=(n, 1, 5)) * 2 + rng.uniform(0, 1.5, size=(n, 1, 1)) * rng.normal(size=(n, 8, 5)))
    ids = rng.permutation(50_000)[:n].astype(np.int64)
    path = tmp_path_factory.mktemp("bbpool") / "lp.arrow"
    write_table(pool_table(ids, log_probs_N_K_C=lp), str(path), rows_per_batch=400)
    labeled = tmp_path_factory.mktemp("bblab") / "labeled.csv"
    labeled.write_text("row_id\n" + "\n".join(str(i) for i in ids[::9]) + "\n")
    return path, labeled, ids


def _run(pool, labeled, out, executor: str, shards: int):
    job = validate_job(
        {
            "pool": {"path": str(pool)},
            "labeled": {"path": str(labeled)},
            "strategy": {"name": "batchbald", "budget": 7, "options": {"num_samples": 200}},
            "runtime": {"executor": executor, "shards": shards},
            "seed": 5,
        }
    )
    result = run_job(job, out_dir=out, progress=False)
    return pq.read_table(out / "selection.parquet"), result.manifest


@pytest.mark.ray
def test_same_selection_local_1_7_shards_and_ray(bb_pool, tmp_path, ray_session):
    pool, labeled, ids = bb_pool
    tables = []
    for executor, shards in (("local", 1), ("local", 7), ("ray", 2)):
        table, manifest = _run(pool, labeled, tmp_path / f"{executor}{shards}", executor, shards)
        assert manifest["round_trips"] == 1 + 1 + 7  # exclude, set-up, one per pick
        tables.append(table)
    assert tables[0].num_rows == 7
    assert not set(tables[0].column("row_id").to_pylist()) & set(ids[::9].tolist())
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])
