"""The README's quickstart, run as written: every ```sh block after a ``<!-- quickstart:GROUP -->``
marker, in order, as one bash script per group, in a scratch directory that links the
repository's Makefile, jobs/ and .venv (so nothing is written into the checkout).

Groups: ``local`` (pools, your model, the notebook API, report, labels, next round; seconds),
``demo`` (``make demo`` at ``DEMO_ROWS=20000 DEMO_ROUNDS=1`` instead of 1,000,000 rows and 3
rounds; Ray) and ``cluster`` (``alscale submit`` to a head of the test's own instead of the
block's ``ray start`` / ``ray stop``; marked ``slow``, in the default suite; tests/runtime/test_submit.py runs the
same submission path in the default suite).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.runtime.loopback_head import client_env, loopback_head

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"<!-- quickstart:(\w+) -->\n```sh\n(.*?)```", re.S)


def quickstart_blocks() -> dict[str, list[str]]:
    """The README's quickstart blocks by group, in README order."""
    groups: dict[str, list[str]] = {}
    for group, body in _BLOCK.findall((ROOT / "README.md").read_text()):
        groups.setdefault(group, []).append(body)
    return groups


def _run_group(group: str, tmp_path: Path, extra_env: dict[str, str] | None = None, timeout: float = 600,
               before: str = "", blocks: list[str] | None = None, base_env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
    for name in ("Makefile", "jobs", ".venv", "cluster.yaml"):
        (tmp_path / name).symlink_to(ROOT / name)
    # make's setup rule depends on pyproject.toml: an old one keeps the existing .venv (no reinstall here)
    (tmp_path / "pyproject.toml").write_text("")
    os.utime(tmp_path / "pyproject.toml", (0, 0))
    script = "set -euo pipefail\n" + before + "\n".join(blocks or quickstart_blocks()[group])
    env = {**(base_env or os.environ), "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           **({} if base_env else {"RAY_AUTH_MODE": "disabled"}), **(extra_env or {})}
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
    proc = _run_group("demo", tmp_path, {"DEMO_ROWS": "20000", "DEMO_ROUNDS": "1"}, timeout=600)
    assert re.search(r"badge beat random after \d of 1 batches", proc.stdout), proc.stdout[-2000:]
    assert (tmp_path / "out" / "demo" / "badge" / "round-1" / "report.html").is_file()
    assert "report of the first badge batch" in proc.stdout


@pytest.fixture
def head_here(tmp_path):
    """A Ray head as the block starts it (``PYTHONPATH=$PWD ray start --head``, token auth), but
    on free ports, in its own process group, stopped by pid: (url, client env)."""
    env = client_env(ROOT / ".venv" / "bin")
    with loopback_head(ROOT / ".venv" / "bin", env, tmp_path / "head.log",
                       head_env={**env, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path) as url:
        yield url, env


@pytest.mark.slow
@pytest.mark.ray
def test_quickstart_cluster_step(tmp_path, head_here):
    """The cluster step's alscale commands against a head of the test's own: on a shared machine
    the block's `ray start` (fixed ports) and `ray stop` (every Ray of the user) would collide
    with other Ray instances, so its `ray ...` lines are replaced by ``head_here`` (the same
    head, on free ports, with a token of its own instead of ~/.ray's)."""
    url, env = head_here
    block = "\n".join(line for line in "\n".join(quickstart_blocks()["cluster"]).splitlines()
                      if not re.match(r"(\w+=\S+\s+)*ray\s", line))  # ray get-auth-token / start / stop
    assert "http://127.0.0.1:8265" in block
    local = "\n".join(quickstart_blocks()["local"])  # the cluster step submits the job of step 3
    proc = _run_group("cluster", tmp_path, timeout=600, before=local + "\n",
                      blocks=[block.replace("http://127.0.0.1:8265", url)], base_env=env)
    assert "SUCCEEDED" in proc.stdout
    assert (tmp_path / "out" / "r0-cluster" / "selection.parquet").is_file()
