"""The README's quickstart, run as written: every ```sh block after a ``<!-- quickstart:GROUP -->``
marker, in order, as one bash script per group, in a scratch directory that links the
repository's Makefile, jobs/ and .venv (so nothing is written into the checkout).

Groups: ``local`` (pools, your model, the notebook API, report, labels, next round; seconds),
``demo`` (``make demo`` at ``DEMO_ROWS=20000`` instead of 1,000,000; Ray) and ``cluster``
(``ray start`` + ``alscale submit``; opt-in ``-m slow``: tests/runtime/test_submit.py runs the
same submission path in the default suite).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"<!-- quickstart:(\w+) -->\n```sh\n(.*?)```", re.S)


def quickstart_blocks() -> dict[str, list[str]]:
    """The README's quickstart blocks by group, in README order."""
    groups: dict[str, list[str]] = {}
    for group, body in _BLOCK.findall((ROOT / "README.md").read_text()):
        groups.setdefault(group, []).append(body)
    return groups


def _run_group(group: str, tmp_path: Path, extra_env: dict[str, str] | None = None, timeout: float = 600,
               before: str = "") -> subprocess.CompletedProcess:
    for name in ("Makefile", "jobs", ".venv", "cluster.yaml"):
        (tmp_path / name).symlink_to(ROOT / name)
    # make's setup rule depends on pyproject.toml: an old one keeps the existing .venv (no reinstall here)
    (tmp_path / "pyproject.toml").write_text("")
    os.utime(tmp_path / "pyproject.toml", (0, 0))
    script = "set -euo pipefail\n" + before + "\n".join(quickstart_blocks()[group])
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "disabled", **(extra_env or {})}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"quickstart:{group} failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_quickstart_has_every_step():
    groups = quickstart_blocks()
    assert set(groups) == {"demo", "local", "cluster"}
    text = "\n".join(b for bs in groups.values() for b in bs)
    for step in ("make demo", "pool info", "pool images", "alscale run", "alscale.select(", "alscale report",
                 "labels export", "labels import", "labeled.path=labels/", "alscale submit", "--offline"):
        assert step in text, step


def test_quickstart_local_steps(tmp_path):
    proc = _run_group("local", tmp_path, timeout=300)
    assert "notebook picks = job picks" in proc.stdout
    assert (tmp_path / "out" / "r0" / "report.html").is_file()
    assert (tmp_path / "out" / "r1" / "selection.parquet").is_file()
    assert "imported 50 labels" in proc.stdout


@pytest.mark.ray
def test_quickstart_demo_step_at_20k_rows(tmp_path):
    proc = _run_group("demo", tmp_path, {"DEMO_ROWS": "20000"}, timeout=600)
    assert re.search(r"badge beat random after \d of 3 batches", proc.stdout), proc.stdout[-2000:]
    assert (tmp_path / "out" / "demo" / "badge" / "round-1" / "report.html").is_file()
    assert "report of the first badge batch" in proc.stdout


@pytest.mark.slow
@pytest.mark.ray
def test_quickstart_cluster_step(tmp_path):
    # the cluster step submits the job of step 3: run the local steps first
    local = "\n".join(quickstart_blocks()["local"])
    proc = _run_group("cluster", tmp_path, timeout=600, before=local + "\n")
    assert "SUCCEEDED" in proc.stdout
    assert (tmp_path / "out" / "r0-cluster" / "selection.parquet").is_file()
