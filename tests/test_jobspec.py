"""Job files: validated as a whole, every error at once, overrides by dotted keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from alscale.errors import JobError
from alscale.jobspec import apply_overrides, load_job, validate_job

ROOT = Path(__file__).resolve().parents[1]


def _job(**over):
    raw = {
        "pool": {"path": "p.arrow"},
        "strategy": {"name": "entropy", "budget": 10},
        "runtime": {"executor": "local", "shards": 2},
        "output": "out",
    }
    raw.update(over)
    return raw


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_job_file_in_the_repo_is_valid_and_documented(path):
    job = load_job(path)
    assert job.strategy.budget > 0
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), f"{path} must start with a comment saying what it does"
    text = path.read_text()
    assert any(f"alscale {cmd} jobs/{path.name}" in text for cmd in ("run", "simulate", "submit")) or "make " in text


def test_defaults_and_canonical_names():
    job = validate_job(_job(strategy={"name": "Max_Entropy", "budget": 3}))
    assert job.strategy.name == "entropy"
    assert job.runtime.shards == 2 and job.seed == 0 and job.model is None


def test_all_errors_reported_at_once_on_one_line():
    raw = _job(
        strategy={"name": "nope", "budget": 0},
        runtime={"executor": "spark", "shards": 0},
        seed=-1,
        extra=1,
    )
    with pytest.raises(JobError) as info:
        validate_job(raw, source="j.yaml")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("job j.yaml: 6 errors:")
    for part in ("unknown field 'extra'", "unknown strategy 'nope'",
                 "strategy.budget must be a positive integer; got 0",
                 "runtime.executor must be one of local, ray; got 'spark'", "runtime.shards must be an integer >= 1",
                 "seed must be a non-negative integer; got -1"):
        assert part in msg


def test_missing_sections_and_nested_unknown_keys():
    with pytest.raises(JobError, match=r"pool is missing; strategy is missing"):
        validate_job({})
    with pytest.raises(JobError, match=r"unknown field 'strategy.bugdet'"):
        validate_job(_job(strategy={"name": "entropy", "budget": 1, "bugdet": 2}))


def test_model_fields_and_mc_samples_cross_check():
    with pytest.raises(JobError, match=r"strategy bald needs at least 2 MC samples; set model.mc_samples >= 2"):
        validate_job(_job(strategy={"name": "bald", "budget": 1}, model={"factory": "mlp"}))
    with pytest.raises(JobError, match=r"'package.module:callable'"):
        validate_job(_job(model={"factory": "mypkg.models.make"}))
    with pytest.raises(JobError, match=r"model.device must be auto, cpu, cuda or cuda:N; got 'tpu'"):
        validate_job(_job(model={"factory": "mlp", "device": "tpu"}))
    job = validate_job(_job(strategy={"name": "bald", "budget": 1}, model={"factory": "mlp", "mc_samples": 20}))
    assert job.model.mc_samples == 20


def test_strategy_options_checked():
    with pytest.raises(JobError, match=r"strategy.options:.*beta"):
        validate_job(_job(strategy={"name": "power", "budget": 1, "options": {"beta": -1}}))
    with pytest.raises(JobError, match=r"strategy.options:.*betta"):
        validate_job(_job(strategy={"name": "power", "budget": 1, "options": {"betta": 1}}))
    job = validate_job(_job(strategy={"name": "power", "budget": 1, "options": {"beta": 2}}))
    assert job.strategy.options["beta"] == 2


def test_overrides_parse_yaml_scalars_and_create_paths():
    raw = apply_overrides(_job(), ["strategy.budget=500", "runtime.executor=local", "runtime.shards=7", "seed=3",
                                   "strategy.name=power", "strategy.options.beta=2.5", "labeled.path=l.csv"])
    job = validate_job(raw)
    assert (job.strategy.budget, job.runtime.shards, job.seed) == (500, 7, 3)
    assert job.strategy.options["beta"] == 2.5 and job.labeled == "l.csv"
    with pytest.raises(JobError, match="must look like key.path=value"):
        apply_overrides(_job(), ["budget"])


def test_override_option_unknown_to_strategy_is_an_error():
    with pytest.raises(JobError, match=r"strategy.options"):
        validate_job(apply_overrides(_job(), ["strategy.options.beta=2.5"]))


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("pool:\n  path: x\nstrategy: {name: entropy, budget: 1\n")
    with pytest.raises(JobError, match=r"job .*bad.yaml: malformed YAML at line \d+, column \d+"):
        load_job(p)
    with pytest.raises(JobError, match=r"cannot read it"):
        load_job(tmp_path / "missing.yaml")
    p.write_text("- 1\n- 2\n")
    with pytest.raises(JobError, match="top level must be a mapping"):
        load_job(p)


def test_empty_sections_name_their_missing_fields():
    """Found by the hypothesis fuzz test: ``{strategy: {}, pool: {}}`` crashed instead of listing errors."""
    with pytest.raises(JobError, match=r"3 errors: pool.path must be a path or URI string; got None; "
                                       r"strategy.name is missing .*strategy.budget must be a positive integer"):
        validate_job({"strategy": {}, "pool": {}})
