"""User strategies: a spec from the user's own file runs as a job, in Python and through the
conformance check; the check fails a shard-dependent strategy with a clear message."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import alscale
from alscale.errors import AlscaleError, JobError
from alscale.jobspec import validate_job
from alscale.pool import pool_table, write_table
from alscale.runtime.coordinator import run_job
from alscale.strategies import Shards, ShardState, get_strategy, shard_op
from alscale.strategies.shards import op_mutates
from alscale.testing import StrategyCheckError, check_strategy, synthetic_pool
from alscale.testing import main as alscale_testing_main
from alscale.types import Selection

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import density_margin

        yield density_margin
    finally:
        sys.path.remove(str(EXAMPLES))


def test_the_readme_example_passes_the_conformance_check(example):
    check_strategy(example.DensityMargin, budgets=(1, 25, 100))
    check_strategy(example.DensityMargin, options={"beta": 0.0})


def test_select_takes_the_spec_and_beta_zero_is_margin(example):
    pool = synthetic_pool(example.DensityMargin)
    lp, emb = pool["log_probs_N_K_C"], pool["embeddings_N_D"]
    sel = alscale.select(example.DensityMargin, budget=20, log_probs=lp, embeddings=emb, beta=0.0)
    ref = alscale.select("margin", budget=20, log_probs=lp)
    np.testing.assert_array_equal(sel.indices, ref.indices)
    weighted = alscale.select(example.DensityMargin, budget=20, log_probs=lp, embeddings=emb, beta=4.0)
    assert not np.array_equal(weighted.indices, ref.indices)  # density changes the order
    assert get_strategy("density_margin") is example.DensityMargin  # registered on first use
    with pytest.raises(AlscaleError, match="option beta of strategy density_margin must be a number >= 0"):
        alscale.select(example.DensityMargin, budget=5, log_probs=lp, embeddings=emb, beta=-1)


def test_ops_declare_whether_they_change_state(example):
    assert op_mutates("density_margin.dm_rank") and not op_mutates("density_margin.dm_sums")
    assert op_mutates("alscale.strategies.quotas.quota_prepare")  # undeclared: assumed to change state
    with pytest.raises(KeyError, match="no shard op 'nope_module_xyz.op'"):
        op_mutates("nope_module_xyz.op")


@dataclass(frozen=True)
class _NoOptions(alscale.StrategyOptions):
    pass


@shard_op(mutates=False)
def _per_shard_best(state: ShardState, k: int) -> tuple:
    state.compute_scores("margin", {}, 0, 0)
    return state.topk(k)


def _select_per_shard(shards: Shards, budget: int, *, options, seed=0, round=0) -> Selection:
    """Deliberately wrong: the best budget/n rows of EACH shard (not the global best)."""
    parts = shards.call(__name__ + "._per_shard_best", 1)
    n = len(parts)
    parts = shards.call(__name__ + "._per_shard_best", -(-budget // n))
    ids = np.concatenate([p[1] for p in parts])[:budget]
    scores = np.concatenate([p[0] for p in parts])[:budget]
    return Selection(ids.astype(np.int64), scores.astype(np.float64), "per_shard_margin")


PER_SHARD = alscale.StrategySpec("per_shard_margin", "loop", "per-shard top-k (deliberately shard-dependent)",
                                 options_type=_NoOptions, select=_select_per_shard)


def test_check_fails_a_shard_dependent_strategy_clearly():
    with pytest.raises(StrategyCheckError) as err:
        check_strategy(PER_SHARD)
    msg = str(err.value)
    assert msg.startswith("strategy per_shard_margin: shard invariance: seed 0, budget 25: 2 shards pick "
                          "differently from 1 shard, first difference at pick ")
    assert "\n" not in msg


def test_the_module_command_exits_0_1_or_2(capsys):
    assert alscale_testing_main([__name__ + ":PER_SHARD"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("alscale.testing: strategy per_shard_margin: shard invariance: ") and err.count("\n") == 1
    assert alscale_testing_main(["nosuch_module_xyz:Spec"]) == 2
    assert "cannot import module 'nosuch_module_xyz'" in capsys.readouterr().err
    assert alscale_testing_main(["entropy"]) == 0
    assert capsys.readouterr().out == "entropy: all checks passed\n"


def test_check_fails_a_strategy_that_picks_labelled_rows():
    def bad(shards, budget, *, options, seed=0, round=0):
        return Selection(np.arange(budget, dtype=np.int64), np.zeros(budget), "bad")

    spec = alscale.StrategySpec("picks_anything", "loop", "returns row ids 0..B-1", select=bad)
    with pytest.raises(StrategyCheckError, match=r"strategy picks_anything: (no labelled rows|row ids|size)"):
        check_strategy(spec)


def test_register_and_lookup_errors(example):
    with pytest.raises(AlscaleError, match="strategy name 'kcenter' of kcenter is taken by strategy kcenter"):
        alscale.register_strategy(alscale.StrategySpec("kcenter", "loop", "x", select=_select_per_shard))
    with pytest.raises(AlscaleError, match="cannot import module 'no_such_pkg_xyz.mod' of strategy"):
        get_strategy("no_such_pkg_xyz.mod:Thing")
    with pytest.raises(AlscaleError, match="module 'density_margin' has no attribute 'Nope'"):
        get_strategy("density_margin:Nope")
    with pytest.raises(AlscaleError, match="is not a strategy: it is a function"):
        get_strategy("density_margin:select_density_margin")
    with pytest.raises(JobError, match="strategy.name: cannot import module 'no_such_pkg_xyz'"):
        validate_job({"pool": {"path": "p.arrow"}, "strategy": {"name": "no_such_pkg_xyz:S", "budget": 3}})
    with pytest.raises(ValueError, match="summary must be one line"):
        alscale.StrategySpec("two_lines", "loop", "a\nb", select=_select_per_shard)


def _pool(root: Path) -> tuple[Path, dict]:
    data = synthetic_pool(get_strategy("margin"), n_rows=400, seed=3)
    path = root / "pool.arrow"
    write_table(pool_table(data["row_ids_N"], log_probs_N_K_C=data["log_probs_N_K_C"],
                           embeddings_N_D=data["embeddings_N_D"]), str(path))
    return path, data


def test_the_example_job_yaml_runs_from_the_command_line(tmp_path, example):
    """examples/density_margin.yaml through `alscale run` (a fresh process, the module on
    PYTHONPATH), equal to alscale.select on the same arrays."""
    pool, data = _pool(tmp_path)
    job = (EXAMPLES / "density_margin.yaml").read_text()
    job = job.replace("data/dm-20k.arrow", str(pool)).replace("out/density_margin", str(tmp_path / "out"))
    (tmp_path / "job.yaml").write_text(job)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(EXAMPLES)]))
    proc = subprocess.run([sys.executable, "-m", "alscale.cli", "run", str(tmp_path / "job.yaml"), "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    got = pq.read_table(tmp_path / "out" / "selection.parquet").to_pydict()
    ref = alscale.select(example.DensityMargin, budget=100, log_probs=data["log_probs_N_K_C"],
                         embeddings=data["embeddings_N_D"], beta=1.0)
    np.testing.assert_array_equal(np.asarray(got["row_id"]), data["row_ids_N"][ref.indices])
    assert set(got["strategy"]) == {"density_margin"}


def test_a_strategy_in_a_temporary_file_runs_on_local_and_ray(tmp_path, monkeypatch):
    """A copy of the example under another module name, outside the package and outside the
    working directory: `alscale run` on the local and the Ray executor with 1 and 3 shards
    gives the in-memory selection (Ray workers get the module through runtime_env py_modules)."""
    src = tmp_path / "strategies_src"
    src.mkdir()
    shutil.copy(EXAMPLES / "density_margin.py", src / "my_dm_strategy.py")
    text = (src / "my_dm_strategy.py").read_text().replace('name="density_margin"', 'name="my_dm"')
    (src / "my_dm_strategy.py").write_text(text.replace('"density_margin")', '"my_dm")'))
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    check_strategy("my_dm_strategy:DensityMargin", ray=True)
    pool, _ = _pool(tmp_path)
    job = validate_job({"pool": {"path": str(pool)}, "model": None,
                        "strategy": {"name": "my_dm_strategy:DensityMargin", "budget": 30},
                        "runtime": {"executor": "local", "shards": 2}})
    assert job.strategy.name == "my_dm_strategy:DensityMargin"  # the job names the import path for the cluster
    res = run_job(job, out_dir=tmp_path / "o", progress=False)
    assert res.manifest["strategy"] == "my_dm" and len(res.selection) == 30
