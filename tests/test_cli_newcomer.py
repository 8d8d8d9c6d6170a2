"""First-contact commands: help examples, --version, pool synth without a suffix, validate
--offline, and alscale bench writing outside the committed files unless --update-docs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from alscale import __version__
from alscale.cli import EXAMPLES, _parser, _subcommands, main

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_help_has_an_example():
    commands = _subcommands(_parser())
    assert {"", "run", "validate", "pool synth", "labels import", "bench", "report"} <= set(commands)
    missing = [path or "alscale" for path, sub in commands.items() if "Example" not in sub.format_help()]
    assert not missing, f"--help without an example: {missing}"
    assert set(EXAMPLES) <= set(commands)  # no example for a command that does not exist


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"alscale {__version__}")


def test_pool_synth_without_a_suffix_writes_arrow_ipc_and_says_so(tmp_path, capsys):
    out = tmp_path / "pool"
    assert main(["pool", "synth", str(out), "--rows", "50", "--dim", "3", "--classes", "2"]) == 0
    got = capsys.readouterr()
    assert f"writing Arrow IPC to {out}.arrow" in got.err
    assert not out.exists() and (tmp_path / "pool.arrow").is_file()
    assert "Arrow IPC" in got.out
    assert main(["pool", "synth", str(tmp_path / "p2"), "--rows", "5", "--dim", "2", "--classes", "2",
                 "--format", "parquet"]) == 0
    assert (tmp_path / "p2.parquet").is_file()


def test_validate_offline_checks_structure_without_the_pool(tmp_path, capsys):
    job = tmp_path / "cloud.yaml"
    job.write_text("pool: {path: 's3://no-such-bucket-alscale/pool.parquet'}\n"
                   "model: {factory: mlp, kwargs: {num_classes: 10}, mc_samples: 20}\n"
                   "strategy: {name: bald, budget: 100}\nruntime: {executor: ray, shards: 8}\n")
    assert main(["validate", str(job), "--offline"]) == 0
    out = capsys.readouterr().out
    assert "structure valid" in out and "not opened" in out
    # a structural error is still found offline, on one line, exit 2
    assert main(["validate", str(job), "--offline", "model.mc_samples=1"]) == 2
    assert "MC samples" in capsys.readouterr().err
    # online, a local pool is opened (and a missing one refused)
    job.write_text(f"pool: {{path: {tmp_path / 'missing.arrow'}}}\nstrategy: {{name: entropy, budget: 5}}\n")
    assert main(["validate", str(job)]) == 2
    assert main(["validate", str(job), "--offline"]) == 0


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("bench_suite_paths", ROOT / "benchmarks" / "suite.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_suite_paths"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bench_writes_the_committed_files_only_with_update_docs(suite, tmp_path):
    results, md, prefix = suite.output_paths(None, False)
    assert results == ROOT / "out" / "bench" and md == results / "BENCHMARKS.md" and prefix == ""
    tracked = subprocess.run(["git", "check-ignore", "-q", str(results / "runs.jsonl")], cwd=ROOT).returncode
    assert tracked == 0, "the default results directory must be git-ignored"
    results, md, _ = suite.output_paths(tmp_path / "r", False)
    assert results == (tmp_path / "r").resolve() and md == results / "BENCHMARKS.md"
    assert suite.output_paths(None, False, markdown=False)[1] is None
    results, md, prefix = suite.output_paths(None, True)
    assert results == suite.RESULTS and md == ROOT / "BENCHMARKS.md" and prefix == "benchmarks/results/suite/"
    with pytest.raises(SystemExit):
        suite.output_paths(tmp_path, True)
    # the markdown links its plots relative to where it is written
    meta = {"date": "d", "git": "g", "machine": {"cpu": "c", "cores": 2, "memory_gib": 1}}
    assert "](size.png)" in suite.write_markdown([], meta, ["size.png"], True, "")


def _status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                          text=True).stdout


@pytest.mark.slow  # ~20 s alone (Ray start-up, a 100k-row pool), 66 s under load: in the default suite
@pytest.mark.ray
def test_a_tiny_real_bench_leaves_git_status_clean(tmp_path):
    """``alscale bench --quick --only entropy --no-peers`` (2 runs, 100k rows): nothing tracked or
    untracked-but-not-ignored changes."""
    before = _status()
    proc = subprocess.run([sys.executable, "-m", "alscale.cli", "bench", "--quick", "--only", "entropy",
                           "--no-peers", "--results", str(tmp_path / "bench")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "bench" / "runs.jsonl").is_file() and (tmp_path / "bench" / "BENCHMARKS.md").is_file()
    assert "only with --update-docs" in proc.stdout
    assert _status() == before
