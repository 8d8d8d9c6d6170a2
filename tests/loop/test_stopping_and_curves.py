"""Stopping criteria (pure functions) and the papers' labels-to-reach table."""

from __future__ import annotations

import math

import pytest

from alscale.loop.curves import labels_to_reach, markdown_table, plot_curves, quartiles, summary_table
from alscale.loop.spec import Plateau, StopConfig
from alscale.loop.stopping import plateaued, stop_after_eval, stop_after_scoring


def test_each_criterion_fires_exactly_at_its_threshold():
    assert stop_after_eval(StopConfig(budget=30), [0.5], 29, 100, 1) is None
    assert stop_after_eval(StopConfig(budget=30), [0.5], 30, 100, 1).startswith("budget")
    assert stop_after_eval(StopConfig(target_accuracy=0.9), [0.8999], 10, 100, 1) is None
    assert stop_after_eval(StopConfig(target_accuracy=0.9), [0.9], 10, 100, 1).startswith("target_accuracy")
    assert stop_after_eval(StopConfig(max_rounds=3), [0.1], 10, 100, 2) is None
    assert stop_after_eval(StopConfig(max_rounds=3), [0.1], 10, 100, 3).startswith("max_rounds")
    assert stop_after_eval(StopConfig(max_rounds=9), [0.1], 10, 0, 1).startswith("pool exhausted")
    assert stop_after_scoring(StopConfig(max_uncertainty=0.2), 0.2) is None
    assert stop_after_scoring(StopConfig(max_uncertainty=0.2), 0.19).startswith("max_uncertainty")
    assert stop_after_scoring(StopConfig(), 0.0) is None


def test_the_first_criterion_in_order_is_the_recorded_reason():
    both = StopConfig(budget=10, target_accuracy=0.5)
    assert stop_after_eval(both, [0.6], 10, 5, 1).startswith("target_accuracy")


def test_plateau():
    assert not plateaued([0.5, 0.6], 0.01, 2)  # needs rounds + 1 values
    assert plateaued([0.5, 0.6, 0.605, 0.601], 0.01, 2)  # best recent 0.605 vs 0.6 before
    assert not plateaued([0.5, 0.6, 0.605, 0.62], 0.01, 2)
    stop = StopConfig(plateau=Plateau(epsilon=0.0, rounds=1))
    assert stop_after_eval(stop, [0.7, 0.7], 10, 5, 1).startswith("plateau")


def _records(strategy, trial, accs, b=10, start=20):
    return [{"strategy": strategy, "trial": trial, "round": i, "n_labels": start + b * i, "batch_size": b,
             "test_accuracy": a} for i, a in enumerate(accs)]


def test_labels_to_reach_uses_set_size_minus_b_when_first_reached():
    recs = _records("bald", 0, [0.5, 0.91, 0.89, 0.96]) + _records("bald", 1, [0.5, 0.6, 0.9, 0.9])
    recs += _records("random", 0, [0.5, 0.6, 0.7, 0.8])
    got = labels_to_reach(recs, 0.9)
    assert got == {"bald": [20.0, 30.0], "random": [math.inf]}
    assert labels_to_reach(recs, 0.95)["bald"] == [40.0, math.inf]


def test_quartiles_interpolate_and_respect_never_reached():
    assert quartiles([70, 90, 110, 130]) == (85.0, 100.0, 115.0)
    assert quartiles([100]) == (100.0, 100.0, 100.0)
    q25, q50, q75 = quartiles([90, 100, math.inf, math.inf])
    assert q25 == pytest.approx(97.5) and math.isinf(q50) and math.isinf(q75)


def test_summary_table_markdown_and_plot(tmp_path):
    recs = _records("bald", 0, [0.5, 0.91, 0.96]) + _records("random", 0, [0.5, 0.6, 0.7])
    rows = summary_table(recs, [0.9, 0.95])
    assert {(r["strategy"], r["target"], r["reached"]) for r in rows} == {
        ("bald", 0.9, 1), ("bald", 0.95, 1), ("random", 0.9, 0), ("random", 0.95, 0)}
    md = markdown_table(rows)
    assert "| bald | 1 | 20 / 20 / 20 | 30 / 30 / 30 |" in md
    assert "| random | 1 | ∞ / ∞ / ∞ | ∞ / ∞ / ∞ |" in md
    png = plot_curves(recs, tmp_path / "c.png", title="t", targets=[0.9])
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
