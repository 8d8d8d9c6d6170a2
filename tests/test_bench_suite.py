"""The benchmark suite behind ``alscale bench`` (benchmarks/suite.py): its plan, its analysis,
and one real engine run in a subprocess (timings are never asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from alscale.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("bench_suite", ROOT / "benchmarks" / "suite.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_suite"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_plan_covers_every_scenario_size_and_axis(suite):
    full = suite.plan(quick=False, only=None, peers=True, slow_peers=True)
    engine = [r for r in full if r["kind"] == "engine"]
    for name, s in suite.SCENARIOS.items():
        sizes = {r["rows"] for r in engine if r["scenario"] == name and r["sweep"] == "size"}
        assert sizes, name
        assert max(sizes) <= s.get("max_rows", 10**12)
    assert {r["rows"] for r in engine if r["scenario"] == "entropy"} >= {100_000, 1_000_000, 10_000_000}
    for name in ("entropy", "kcenter"):  # (a run shared by two sweeps is planned once)
        assert {(r["workers"], r["executor"]) for r in engine if r["scenario"] == name and r["rows"] == 1_000_000
                and not r["options"] and r["budget"] == suite.SCENARIOS[name]["budget"]} == {
            (w, e) for w in (1, 2, 4) for e in ("local", "ray")}
    assert {r["options"].get("backend") for r in engine if r["sweep"] == "backend"} == {"numpy", "torch", "faiss"}
    peers = {r["peer"] for r in full if r["kind"] == "peer"}
    assert peers == set(suite.PEERS)
    # Every peer run has the alscale run it is compared with (same scenario, rows, budget).
    for p in (r for r in full if r["kind"] == "peer"):
        assert any(e["scenario"] == p["scenario"] and e["rows"] == p["rows"] and e["budget"] == p["budget"]
                   for e in engine), p
    quick = suite.plan(quick=True, only=None, peers=True)
    assert len(quick) < len(full) / 2 and max(r["rows"] for r in quick) == 100_000


def test_fitted_growth_recovers_the_exponent(suite):
    xs = [1e5, 1e6, 1e7]
    assert suite.fit_growth([(x, 3e-7 * x) for x in xs]) == pytest.approx(1.0)
    assert suite.fit_growth([(x, 1e-12 * x * x) for x in xs]) == pytest.approx(2.0)
    assert suite.fit_growth([(1e5, 1.0)]) is None


def test_goals_and_tables_read_the_runs(suite):
    def eng(scenario, rows, select, budget=None):
        s = suite.SCENARIOS[scenario]
        return {"kind": "engine", "scenario": scenario, "rows": rows, "workers": 2, "executor": "local",
                "options": {}, "budget": budget or suite.budget_for(s, rows), "sweep": "size",
                "phase_seconds": {"startup": 9.0, "read": 0.1, "select": select, "write": 0.01},
                "round_trips": 4, "peak_growth_mb": 10.0, "picks": [1, 2, 3]}

    recs = [eng("kcenter", 1_000_000, 2.5), eng("badge", 1_000_000, 25.0), eng("entropy", 1_000_000, 0.3),
            eng("batchbald", 2_000, 0.25), eng("cluster_margin", 1_000_000, 30.0),
            {"kind": "peer", "peer": "batchbald_redux", "scenario": "batchbald", "rows": 2_000, "budget": 10,
             "select_s": 10.0, "peak_growth_mb": 50.0, "picks": [1, 2], "sweep": "peers"}]
    got = {g[0].split(":")[0].split(" at ")[0].split(" (")[0]: g[2] for g in suite.goals(recs)}
    assert got["kcenter"] == "met" and got["badge"] == "missed"
    assert got["entropy ≥ 500k rows/s"] == "met"  # 1M / 0.41 s
    assert got["BatchBALD ≥ 20× batchbald_redux"] == "met"  # 10 / 0.25 = 40×
    assert got["cluster_margin"] == "met"
    rows = suite.peer_rows(recs)
    assert rows[0][2] == "batchbald_redux" and rows[0][7] == "40.0×"
    md = suite.write_markdown(recs, {"date": "2026-11-27", "git": "abc", "machine": suite.machine()}, [], False)
    assert "## Goals" in md and "## ImageNet on a GPU cluster, on paper" in md
    assert len(suite.cluster_model(recs)) == 3


def test_one_engine_run_in_a_subprocess_reports_phases_and_memory(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "DATA", tmp_path)
    s = suite.SCENARIOS["entropy"]
    pool = suite.ensure_pool(s, 5_000)
    cfg = {"kind": "engine", "scenario": "entropy", "rows": 5_000, "workers": 2, "executor": "local",
           "budget": 50, "options": {}, "pool": str(pool), "labeled": None}
    res = suite.spawn(["--one", json.dumps(cfg)], sys.executable, timeout=300)
    assert "error" not in res, res
    assert set(res["phase_seconds"]) >= {"validate", "read", "select", "write"}
    assert len(res["picks"]) == 50 and res["round_trips"] >= 1 and res["peak_growth_mb"] >= 0
    # The picks are the entropy top-50 of the same pool.
    from alscale.pool import read_shard
    from alscale.strategies import scores
    from alscale.types import ShardSpec

    lp = read_shard(ShardSpec(str(pool), 0, 0, 5_000), ["log_probs"]).log_probs_N_K_C
    ent = scores.entropy(lp)
    assert res["picks"] == np.lexsort((np.arange(5_000), -ent))[:50].tolist()


def test_alscale_bench_needs_a_checkout(monkeypatch, tmp_path, capsys):
    import alscale.cli as cli

    monkeypatch.setattr(cli, "__file__", str(tmp_path / "alscale" / "cli.py"))
    assert main(["bench", "--quick"]) == 2
    assert "alscale bench runs" in capsys.readouterr().err
