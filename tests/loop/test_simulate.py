"""The active-learning loop end to end on a small synthetic pool (local executor; one Ray run)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from alscale.cli import main
from alscale.errors import AlscaleError, JobError
from alscale.jobspec import validate_job
from alscale.loop import Ledger, simulate
from alscale.strategies import get_strategy, strategy_names
from tests.loop.conftest import loop_job, write_job


def _run(loop_pools, tmp_path, name="out", strategy=None, job_overrides=None, **loop):
    pool, test = loop_pools
    raw = loop_job(pool, test, tmp_path / name, **loop)
    if strategy is not None:
        raw["strategy"] = strategy
    raw.update(job_overrides or {})
    return simulate(validate_job(raw), progress=False)


def _curve(result, strategy):
    return [(r["round"], r["n_labels"], r["test_accuracy"], r["test_nll"])
            for r in result.records if r["strategy"] == strategy]


def test_labels_grow_by_b_and_outputs_are_written(loop_pools, tmp_path):
    result = _run(loop_pools, tmp_path, strategies=["entropy", "random"], trials=2)
    for strategy in ("entropy", "random"):
        for trial in (0, 1):
            rows = [r for r in result.records if r["strategy"] == strategy and r["trial"] == trial]
            assert [r["n_labels"] for r in rows] == [6, 11, 16]
            assert [r["n_acquired"] for r in rows] == [5, 5, 0]
            assert rows[-1]["stop_reason"].startswith("max_rounds")
            ledger = Ledger(tmp_path / "out" / "runs" / strategy / f"trial-{trial}" / "ledger")
            assert ledger.rounds == [0, 1, 2] and len(ledger) == 16
            assert np.unique(ledger.row_ids).size == 16
    # Paired design: every strategy of a trial starts from the same initial set.
    first = [Ledger(tmp_path / "out" / "runs" / s / "trial-0" / "ledger").row_ids[:6] for s in ("entropy", "random")]
    np.testing.assert_array_equal(*first)
    # Balanced initial set: 6 rows over 3 classes = 2 each.
    labels = Ledger(tmp_path / "out" / "runs" / "entropy" / "trial-0" / "ledger").labels[:6]
    assert np.bincount(labels, minlength=3).tolist() == [2, 2, 2]
    out = tmp_path / "out"
    for name in ("rounds.csv", "rounds.parquet", "curves.png", "labels_to_reach.md", "labels_to_reach.csv",
                 "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pq.read_table(out / "rounds.parquet").num_rows == 12
    # Each acquisition went through the coordinator and left its selection + manifest.
    sel = pq.read_table(out / "runs" / "entropy" / "trial-0" / "round-0000" / "selection.parquet")
    assert sel.num_rows == 5 and set(sel["strategy"].to_pylist()) == {"entropy"}


def test_same_seed_same_curve_other_seed_other_picks(loop_pools, tmp_path):
    a = _run(loop_pools, tmp_path, "a", strategies=["bald"])
    b = _run(loop_pools, tmp_path, "b", strategies=["bald"])
    assert _curve(a, "bald") == _curve(b, "bald")
    ids = [Ledger(tmp_path / n / "runs" / "bald" / "trial-0" / "ledger").row_ids for n in ("a", "b")]
    np.testing.assert_array_equal(*ids)
    _run(loop_pools, tmp_path, "c", strategies=["bald"], job_overrides={"seed": 4})
    other = Ledger(tmp_path / "c" / "runs" / "bald" / "trial-0" / "ledger").row_ids
    assert not np.array_equal(other, ids[0])


def test_every_strategy_runs_through_the_loop(loop_pools, tmp_path):
    # learning_loss reads a model's loss-prediction output, which the loop's builtin model has not
    # (tests/scoring/test_learning_loss.py runs it with one).
    names = [n for n in strategy_names() if n != "learning_loss"]
    result = _run(loop_pools, tmp_path, strategies=names, stop={"max_rounds": 1},
                  strategy={"name": "entropy", "budget": 4})
    assert sorted(result.stop_reasons) == sorted(get_strategy(n).name for n in names)
    for name in result.stop_reasons:
        rows = [r for r in result.records if r["strategy"] == name]
        assert [r["n_labels"] for r in rows] == [6, 10], name
        ledger = Ledger(tmp_path / "out" / "runs" / name / "trial-0" / "ledger")
        assert np.unique(ledger.row_ids).size == 10, name


def test_subsample_scores_only_a_subsample_and_never_relabels(loop_pools, tmp_path):
    result = _run(loop_pools, tmp_path, strategies=["kcenter", "entropy"], subsample=40, stop={"max_rounds": 3})
    for name in ("kcenter", "entropy"):
        manifest = (tmp_path / "out" / "runs" / name / "trial-0" / "round-0001" / "manifest.json").read_text()
        import json

        n_rows = json.loads(manifest)["pool"]["n_rows"]
        # 40 unlabelled candidates, plus the 11 labelled anchors for k-center.
        assert n_rows == (51 if name == "kcenter" else 40), (name, n_rows)
        ids = Ledger(tmp_path / "out" / "runs" / name / "trial-0" / "ledger").row_ids
        assert np.unique(ids).size == ids.size == 21
    assert all(r["n_labels"] <= 21 for r in result.records)


@pytest.mark.parametrize(
    ("stop", "expect_prefix", "expect_labels"),
    [
        ({"budget": 13}, "budget", [6, 11, 13]),  # the last batch is cut to the budget
        ({"target_accuracy": 0.01}, "target_accuracy", [6]),
        ({"plateau": {"epsilon": 1.0, "rounds": 1}}, "plateau", [6, 11]),
        ({"max_uncertainty": 1e9, "max_rounds": 5}, "max_uncertainty", [6]),
        ({"max_rounds": 1}, "max_rounds", [6, 11]),
    ],
)
def test_stopping_criteria_fire_and_are_recorded(loop_pools, tmp_path, stop, expect_prefix, expect_labels):
    result = _run(loop_pools, tmp_path, strategies=["entropy"], stop=stop)
    rows = result.records
    assert [r["n_labels"] for r in rows] == expect_labels
    assert rows[-1]["stop_reason"].startswith(expect_prefix), rows[-1]["stop_reason"]
    assert all(r["stop_reason"] is None for r in rows[:-1])
    assert result.stop_reasons["entropy"][0] == rows[-1]["stop_reason"]


def test_validation_metric_and_finetune_mode(loop_pools, tmp_path):
    result = _run(loop_pools, tmp_path, strategies=["margin"],
                  train={"mode": "finetune", "epochs": 3, "draws_per_epoch": 64, "patience": None},
                  stop={"metric": "validation", "max_rounds": 2})
    assert [r["n_labels"] for r in result.records] == [6, 11, 16]
    assert all(r["val_accuracy"] is not None for r in result.records)


def test_initial_set_by_a_strategy(loop_pools, tmp_path):
    result = _run(loop_pools, tmp_path, strategies=["entropy"], initial={"size": 6, "method": "kcenter"})
    ledger = Ledger(tmp_path / "out" / "runs" / "entropy" / "trial-0" / "ledger")
    assert len(ledger) == 16 and result.records[0]["n_labels"] == 6
    assert pq.read_table(tmp_path / "out" / "runs" / "entropy" / "trial-0" / "ledger" / "round-00000.parquet"
                         )["source"][0].as_py() == "initial:kcenter"


def test_ray_executor_gives_the_same_curve(loop_pools, tmp_path, ray_session):
    local = _run(loop_pools, tmp_path, "local", strategies=["batchbald", "kcenter"], stop={"max_rounds": 1})
    on_ray = _run(loop_pools, tmp_path, "ray", strategies=["batchbald", "kcenter"], stop={"max_rounds": 1},
                  job_overrides={"runtime": {"executor": "ray", "shards": 2}})
    for name in ("batchbald", "kcenter"):
        assert _curve(local, name) == _curve(on_ray, name)
        ids = [Ledger(tmp_path / d / "runs" / name / "trial-0" / "ledger").row_ids for d in ("local", "ray")]
        np.testing.assert_array_equal(*ids)


def test_refuses_to_overwrite_without_force(loop_pools, tmp_path):
    _run(loop_pools, tmp_path, strategies=["random"], stop={"max_rounds": 1})
    with pytest.raises(AlscaleError, match="already holds a simulation.*--force"):
        _run(loop_pools, tmp_path, strategies=["random"], stop={"max_rounds": 1})


def test_cli_simulate_and_its_errors(loop_pools, tmp_path, capsys):
    pool, test = loop_pools
    job = write_job(tmp_path / "job.yaml", loop_job(pool, test, tmp_path / "out"))
    assert main(["simulate", str(job), "--no-progress", "loop.strategies=[least_confidence]"]) == 0
    printed = capsys.readouterr().out
    assert "least_confidence trial 0: 16 labels" in printed and "| least_confidence | 1 |" in printed
    assert main(["simulate", str(job), "--no-progress"]) == 2
    assert "already holds a simulation" in capsys.readouterr().err
    bad = loop_job(pool, test, tmp_path / "out2")
    bad["loop"]["stop"] = {"max_uncertainty": 0.1, "max_rounds": 1}
    bad["loop"]["strategies"] = ["kcenter"]
    bad["loop"]["train"]["colour"] = "red"
    assert main(["simulate", str(write_job(tmp_path / "bad.yaml", bad))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 errors" in err
    assert "loop.train.colour" in err and "kcenter is not one" in err
    assert not (tmp_path / "out2").exists()


def test_bad_loop_sections_fail_before_anything_is_written(loop_pools, tmp_path):
    pool, test = loop_pools
    cases = [
        ({"test": None}, "loop.test must be the path"),
        ({"validation": 0}, "loop.train.patience (early stopping) needs validation rows"),
        ({"stop": {}}, "loop.stop sets no criterion"),
        ({"initial": {"size": 6, "method": "nonsense"}}, "loop.initial.method must be balanced, random"),
        ({"strategies": ["bald", "bald"]}, "names bald more than once"),
        ({"strategies": ["no_such"]}, "loop.strategies[0]"),
        ({"train": {"mode": "warm"}}, "loop.train.mode must be one of scratch, finetune"),
        ({"stop": {"plateau": {"epsilon": -1}}}, "plateau.epsilon must be a number >= 0"),
    ]
    for override, message in cases:
        raw = loop_job(pool, test, tmp_path / "never", **override)
        with pytest.raises(JobError) as info:
            simulate(validate_job(raw), progress=False)
        assert message in str(info.value), (override, str(info.value))
    raw = loop_job(pool, test, tmp_path / "never")
    raw["model"]["mc_samples"] = 1
    raw["loop"]["strategies"] = ["bald"]
    with pytest.raises(JobError, match="needs model.mc_samples >= 2"):
        simulate(validate_job(raw), progress=False)
    raw = loop_job(pool, pool.replace("pool.arrow", "whole.arrow").replace("whole", "missing"), tmp_path / "never")
    with pytest.raises(AlscaleError, match="missing"):
        simulate(validate_job(raw), progress=False)
    assert not (tmp_path / "never").exists()
