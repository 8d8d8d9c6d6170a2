"""A small labelled pool and test pool for the loop tests (synthetic, planted clusters)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alscale.pool import open_pool, pool_table, read_shard, synth_pool, write_table
from alscale.types import ShardSpec


@pytest.fixture(scope="session")
def loop_pools(tmp_path_factory) -> tuple[str, str]:
    """(pool with 480 rows, test pool with 240 rows) from one synthetic distribution (D=8, C=3)."""
    root = tmp_path_factory.mktemp("loop-pools")
    whole = str(root / "whole.arrow")
    info = synth_pool(whole, rows=720, dim=8, classes=3, seed=5, label_noise=0.0)
    data = read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["features", "label"])
    paths = []
    for name, lo, hi in (("pool.arrow", 0, 480), ("test.arrow", 480, 720)):
        path = str(root / name)
        write_table(pool_table(data.row_ids_N[lo:hi], features_N_D=data.features_N_D[lo:hi],
                               labels_N=data.labels_N[lo:hi]), path, format="ipc")
        assert open_pool(path).n_rows == hi - lo
        paths.append(path)
    return paths[0], paths[1]


def loop_job(pool: str, test_pool: str, out: Path, **loop_overrides) -> dict:
    """A fast loop job dict: an MLP with dropout (K=4), b=5, 2 acquisitions."""
    loop = {
        "test": test_pool,
        "validation": 30,
        "initial": {"size": 6, "method": "balanced"},
        "trials": 1,
        "train": {"epochs": 4, "draws_per_epoch": 128, "batch_size": 32, "lr": 0.01, "patience": 2},
        "stop": {"max_rounds": 2},
    }
    for key, value in loop_overrides.items():
        loop[key] = value
    return {
        "pool": {"path": pool},
        "model": {"factory": "mlp", "kwargs": {"num_classes": 3, "hidden": 16, "depth": 1, "dropout": 0.3},
                  "mc_samples": 4, "batch_size": 64},
        "strategy": {"name": "entropy", "budget": 5},
        "loop": loop,
        "runtime": {"executor": "local", "shards": 2},
        "seed": 3,
        "output": str(out),
    }


def write_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job))
    return path
