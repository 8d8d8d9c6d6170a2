"""``alscale report``: a self-contained HTML page, checked in a real headless browser when one
is installed (Chromium from Debian's packages: ``apt-get install chromium``)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from alscale.cli import main
from alscale.jobspec import validate_job
from alscale.pool import pool_table, write_table
from alscale.runtime.coordinator import run_job
from tests.conftest import log_softmax

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def _render(page) -> str:
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser (apt-get install chromium) to open the report in")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    return proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    n = 3000
    pool = root / "pool.arrow"
    write_table(pool_table(np.arange(n, dtype=np.int64), log_probs_N_K_C=log_softmax(rng.normal(size=(n, 4, 5)) * 2),
                           embeddings_N_D=rng.normal(size=(n, 6)).astype(np.float32)), str(pool))
    out = root / "badge"
    run_job(validate_job({"pool": {"path": str(pool)}, "strategy": {"name": "badge", "budget": 40},
                          "runtime": {"executor": "local", "shards": 2}}), out_dir=out, progress=False)
    feats = root / "feat.arrow"
    write_table(pool_table(np.arange(n, dtype=np.int64), features_N_D=rng.normal(size=(n, 8)).astype(np.float32)),
                str(feats))
    model_out = root / "model"
    model = {"factory": "mlp", "kwargs": {"num_classes": 3}, "mc_samples": 2}
    run_job(validate_job({"pool": {"path": str(feats)}, "model": model, "strategy": {"name": "kcenter", "budget": 30},
                          "runtime": {"executor": "local", "shards": 2}}),
            out_dir=model_out, progress=False)
    return out, model_out


@pytest.mark.parametrize("which", [0, 1], ids=["pool-columns", "model-cache"])
def test_report_page_loads_and_shows_its_images(runs, capsys, which):
    out = runs[which]
    assert main(["report", str(out), "--sample", "1000"]) == 0
    page = out / "report.html"
    text = page.read_text()
    n_img = text.count("<img ")
    assert n_img == 4  # scores, projection, class balance, timings
    assert len(re.findall(r'src="data:image/png;base64,', text)) == n_img
    dom = _render(page)
    assert f'data-images="{n_img}"' in dom and f'data-images-loaded="{n_img}"' in dom, dom[-800:]
    assert "alscale report" in dom and ("badge" in dom or "kcenter" in dom)


def test_report_of_a_simulation_has_learning_curves(tmp_path):
    from alscale.workflow.report import build_report

    (tmp_path / "rounds.csv").write_text(
        '"strategy","trial","round","n_labels","batch_size","test_accuracy"\n'
        + "".join(f'"{s}",{t},{r},{20 + 10 * r},10,{0.5 + 0.04 * r + (0.02 if s == "bald" else 0) + 0.01 * t}\n'
                  for s in ("bald", "random") for t in range(2) for r in range(5)))
    page = build_report(tmp_path)
    text = page.read_text()
    assert "Learning curves" in text and text.count("<img ") == 1
    dom = _render(page)
    assert 'data-images-loaded="1"' in dom


def test_report_of_a_directory_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds neither a job's selection" in capsys.readouterr().err
