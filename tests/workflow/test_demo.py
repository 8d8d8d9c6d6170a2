"""The demo's driver (``make demo``): its refusals and its printed comparison. The run itself
is tests/test_quickstart.py's demo step (20,000 rows, Ray)."""

from __future__ import annotations

import pytest

from alscale.errors import AlscaleError
from alscale.workflow.demo import DemoResult, ensure_pool, format_result, run_demo, synth_command


def test_refuses_to_replace_a_directory_that_is_not_a_demo(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("x")
    with pytest.raises(AlscaleError, match="does not hold an earlier demo"):
        run_demo("jobs/demo.yaml", pool=str(tmp_path / "p.arrow"), test=str(tmp_path / "t.arrow"),
                 out=tmp_path / "mine", rows=300, test_rows=50)
    assert (tmp_path / "mine" / "precious.txt").exists()


def test_refuses_a_pool_of_another_size(tmp_path):
    ensure_pool(str(tmp_path / "p.arrow"), 200, 0)
    with pytest.raises(AlscaleError, match="delete it"):
        ensure_pool(str(tmp_path / "p.arrow"), 300, 0)
    assert "--separation 12 --label-noise 0 --split test" in synth_command("x.arrow", 10, 0, "test")


def test_the_comparison_counts_wins_and_labels_to_target():
    rows = {s: [{"round": r, "labels": 20 + 40 * r, "test_accuracy": a} for r, a in enumerate(accs)]
            for s, accs in (("badge", [0.7, 0.9, 0.96, 0.99]), ("random", [0.7, 0.85, 0.93, 0.97]))}
    for s in rows:
        for rec in rows[s][:-1]:
            rec.update(batch_classes=9, batch_entropy=0.5, score_s=1.0, select_s=0.5)
    text = format_result(DemoResult("badge", rows, pool_rows=1000, test_rows=100))
    assert "badge beat random after 3 of 3 batches (mean gain +3.3 points)" in text
    assert "labels to 95% test accuracy: badge 100, random 140" in text
