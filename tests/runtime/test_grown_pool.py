"""Rounds that know their history: the manifest records the content hashes of the pool files,
the checkpoint and the model's source; a pool directory that has grown (a file appended) is
selected from again without rescoring its unchanged rows — the chunk cache keeps rows by the
content of their pool files, not by the shard plan — with the same selection as a fresh run
on the grown pool."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from alscale.jobspec import validate_job
from alscale.pool import pool_table, write_table
from alscale.runtime.coordinator import run_job

ROWS = 900  # per file


def _write_part(root, index, seed):
    rng = np.random.default_rng(seed)
    ids = np.arange(index * ROWS, (index + 1) * ROWS, dtype=np.int64)
    x = (rng.normal(size=(ROWS, 12)) + rng.integers(0, 3, ROWS)[:, None] * 2).astype(np.float32)
    write_table(pool_table(ids, features_N_D=x), str(root / f"part-{index}.arrow"))


@pytest.fixture()
def setup(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(2):
        _write_part(pool, i, i)
    from alscale.scoring.builtins import mlp

    torch.save(mlp(12, 4, hidden=16, init_seed=3).state_dict(), tmp_path / "mlp.pt")
    return tmp_path, pool


def _job(tmp_path, pool, shards=2):
    return validate_job({
        "pool": {"path": str(pool)}, "seed": 1,
        "model": {"factory": "mlp", "kwargs": {"in_features": 12, "hidden": 16, "num_classes": 4},
                  "checkpoint": str(tmp_path / "mlp.pt")},
        "selection": {"budget": 30, "scores": [{"name": "entropy"}, {"name": "margin", "weight": 0.5}],
                      "diversity": {"kind": "kcenter"}},
        "runtime": {"executor": "local", "shards": shards, "chunk_rows": 250}}, source="grown.yaml")


def _rows(ranges):
    return sorted(r for a, b in ranges for r in range(a, b))


def test_grown_pool_scores_only_the_new_file(setup):
    tmp_path, pool = setup
    out = tmp_path / "out"
    first = run_job(_job(tmp_path, pool), out_dir=out, progress=False).manifest
    files = first["inputs"]["pool"]["files"]
    assert [f["rows"] for f in files] == [ROWS, ROWS] and [f["first_row"] for f in files] == [0, ROWS]
    for f in files:
        with open(f["path"], "rb") as fh:
            assert f["sha256"] == hashlib.sha256(fh.read()).hexdigest()
    ckpt = first["inputs"]["model"]["checkpoint"]
    assert ckpt["sha256"] == hashlib.sha256((tmp_path / "mlp.pt").read_bytes()).hexdigest()
    assert first["inputs"]["embeddings"]["source"] == "model" and first["inputs"]["model"]["factory_source_sha256"]

    _write_part(pool, 2, 2)  # the pool grows: a third file; the shard plan moves (1350 rows a shard)
    again = run_job(_job(tmp_path, pool), out_dir=out, force=True, resume=True, progress=False).manifest
    cache = again["cache"]
    assert _rows(cache["computed"]) == list(range(2 * ROWS, 3 * ROWS))  # only the new file was scored
    assert _rows(cache["reused"]) == list(range(2 * ROWS)) and cache["rejected"] == []
    assert len(again["inputs"]["pool"]["files"]) == 3

    fresh = run_job(_job(tmp_path, pool, shards=3), out_dir=tmp_path / "fresh", progress=False).manifest
    assert _rows(fresh["cache"]["computed"]) == list(range(3 * ROWS))
    assert pq.read_table(out / "selection.parquet").equals(pq.read_table(tmp_path / "fresh" / "selection.parquet"))


def test_a_changed_pool_file_is_scored_again(setup):
    tmp_path, pool = setup
    out = tmp_path / "out"
    run_job(_job(tmp_path, pool), out_dir=out, progress=False)
    _write_part(pool, 1, 99)  # the second file's rows change (same row ids, other features)
    again = run_job(_job(tmp_path, pool), out_dir=out, force=True, resume=True, progress=False).manifest
    cache = again["cache"]
    assert _rows(cache["computed"]) == list(range(ROWS, 2 * ROWS))
    assert _rows(cache["reused"]) == list(range(ROWS))
    assert cache["rejected"] and all("pool's files under these rows" in r["reason"] for r in cache["rejected"])
    run_job(_job(tmp_path, pool), out_dir=tmp_path / "fresh", progress=False)
    assert pq.read_table(out / "selection.parquet").equals(pq.read_table(tmp_path / "fresh" / "selection.parquet"))
    files = json.loads((out / "manifest.json").read_text())["inputs"]["pool"]["files"]
    assert files[1]["sha256"] == hashlib.sha256((pool / "part-1.arrow").read_bytes()).hexdigest()


def test_next_round_in_its_own_directory_reuses_the_last_rounds_cache(setup):
    """``alscale run JOB --out r1 --cache-from r0``: the rows round 0 scored are read from its
    cache (never written), only the appended file is scored, into r1's own cache."""
    import subprocess
    import sys

    import yaml

    tmp_path, pool = setup
    job = _job(tmp_path, pool)
    run_job(job, out_dir=tmp_path / "r0", progress=False)
    before = sorted(p.name for p in (tmp_path / "r0" / "cache").iterdir())
    _write_part(pool, 2, 2)
    (tmp_path / "job.yaml").write_text("# a round\n" + yaml.safe_dump(job.to_dict()))
    proc = subprocess.run([sys.executable, "-m", "alscale.cli", "run", str(tmp_path / "job.yaml"), "--out",
                           str(tmp_path / "r1"), "--cache-from", str(tmp_path / "r0"), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cache = json.loads((tmp_path / "r1" / "manifest.json").read_text())["cache"]
    assert _rows(cache["computed"]) == list(range(2 * ROWS, 3 * ROWS))
    assert _rows(cache["reused"]) == list(range(2 * ROWS))
    assert sorted(p.name for p in (tmp_path / "r0" / "cache").iterdir()) == before  # read only
    fresh = tmp_path / "fresh"
    run_job(_job(tmp_path, pool), out_dir=fresh, progress=False)
    assert pq.read_table(tmp_path / "r1" / "selection.parquet").equals(pq.read_table(fresh / "selection.parquet"))
    proc = subprocess.run([sys.executable, "-m", "alscale.cli", "run", str(tmp_path / "job.yaml"), "--out",
                           str(tmp_path / "r2"), "--cache-from", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--cache-from" in proc.stderr and "no cached model outputs" in proc.stderr
    assert not (tmp_path / "r2").exists()
