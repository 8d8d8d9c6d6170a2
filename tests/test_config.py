"""Declarative configuration (alscale/config.py): the job, loop and stream sections keep the
exact messages of the hand-written parsers they replaced, every error at once and in the
same order. The expected texts below were produced by the old parsers (stop 20's
``validate_job``, ``parse_loop``, ``parse_stream``) on the same inputs; the lists of valid
top-level fields name ``selection`` since the objective branch added that section."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from alscale.config import Section, check_section, setting
from alscale.errors import JobError
from alscale.jobspec import JobSpec, validate_job
from alscale.loop.spec import parse_loop
from alscale.strategies.registry import strategy_names
from alscale.workflow.stream import parse_stream

JOB_CASES = [
    ({},
     'job j.yaml: 2 errors: pool is missing; strategy is missing'),
    ({'pool': {'path': 'p.arrow'}},
     'job j.yaml: 1 error: strategy is missing'),
    ({'pool': {}, 'strategy': {}},
     'job j.yaml: 3 errors: pool.path must be a path or URI string; got None; strategy.name is missing (valid: '
     '{strategies}); strategy.budget must be a positive integer; got None'),
    ({'pool': 'p.arrow', 'strategy': [], 'runtime': 5, 'labeled': [], 'model': 3},
     "job j.yaml: 5 errors: pool must be a mapping; got 'p.arrow'; labeled must be a mapping; got []; model "
     'must be a mapping or null; got 3; strategy must be a mapping; got []; runtime must be a mapping; got 5'),
    ({'extra': 1, 'pool': {'path': 3, 'x': 1}, 'strategy': {'name': 'entropy', 'budget': 0, 'bugdet': 5},
      'runtime': {'executor': 'spark', 'shards': 0, 'shardz': 2}, 'seed': -1},
     "job j.yaml: 9 errors: unknown field 'extra' (valid: labeled, loop, model, output, pool, runtime, seed, "
     "selection, strategy, stream); unknown field 'pool.x' (valid under pool: path); unknown field 'strategy.bugdet' "
     '(valid under strategy: budget, embedding, name, options, quotas, round, seals, seals_index, seals_mode); '
     "unknown field 'runtime.shardz' (valid under runtime: address, cache, chunk_rows, cpus_per_worker, "
     'executor, gpus_per_worker, memory_budget, shards, startup_timeout_s); pool.path must be a path or URI '
     'string; got 3; strategy.budget must be a positive integer; got 0; runtime.executor must be one of local, '
     "ray; got 'spark'; runtime.shards must be an integer >= 1; got 0; seed must be a non-negative integer; got "
     '-1'),
    ({'pool': {'path': 'p.arrow'},
      'strategy': {'name': 'power', 'budget': True, 'options': {'beta': -1}, 'round': 1.5, 'embedding': 'model',
                   'seals': 0, 'seals_index': '', 'seals_mode': 'bogus', 'quotas': 5}},
     'job j.yaml: 8 errors: strategy.budget must be a positive integer; got True; strategy.options: option beta '
     'of strategy power must be a positive number; got -1; strategy.round must be a non-negative integer; got '
     '1.5; strategy.embedding is model but the job has no model; add a model or use embedding: column; '
     'strategy.seals must be a number of neighbours >= 1 (SEALS candidate filter) or null; got 0; '
     "strategy.seals_index must be a directory path and needs strategy.seals; got ''; strategy.seals_mode must "
     "be one of exact, approx_ivf_flat, approx_ivf_pq, approx_hnsw; got 'bogus'; strategy.quotas must be a "
     "mapping with 'min' and/or 'max' (and optionally 'by', 'max_groups'); got 5"),
    ({'pool': {'path': 'p.arrow'},
      'strategy': {'name': 'kcenter', 'budget': 2, 'seals': 3, 'quotas': {'min': 1}}},
     None),
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'entropy', 'budget': 2, 'seals_index': 'd'}},
     "job j.yaml: 1 error: strategy.seals_index must be a directory path and needs strategy.seals; got 'd'"),
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'entropy', 'budget': 5},
      'model': {'factory': 'pkg.mod.net', 'kwargs': [1], 'checkpoint': 5, 'mc_samples': 0, 'batch_size': 2.0,
                'device': 'tpu', 'transform': '', 'decode_threads': 0}},
     "job j.yaml: 8 errors: model.factory 'pkg.mod.net' looks like an import path; write it as "
     "'package.module:callable'; model.kwargs must be a mapping; got [1]; model.checkpoint must be a file path "
     'or null; got 5; model.mc_samples must be an integer >= 1; got 0; model.batch_size must be a positive '
     "integer; got 2.0; model.device must be auto, cpu, cuda or cuda:N; got 'tpu'; model.transform must be "
     "'pixels' or 'package.module:callable'; got ''; model.decode_threads must be a positive integer; got 0"),
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'entropy', 'budget': 5},
      'runtime': {'executor': 'local', 'address': 5, 'cpus_per_worker': 0, 'gpus_per_worker': -1, 'chunk_rows': 'x',
                  'startup_timeout_s': 0, 'cache': 'yes', 'memory_budget': 'lots'}},
     'job j.yaml: 8 errors: runtime.address must be a string (e.g. ray://head:10001 or auto) or null; got 5; '
     'runtime.address is set but runtime.executor is local; use runtime.executor=ray; runtime.cpus_per_worker '
     'must be a positive number or null; got 0; runtime.gpus_per_worker must be a positive number or null; got '
     "-1; runtime.chunk_rows must be a positive integer; got 'x'; runtime.startup_timeout_s must be a positive "
     "number of seconds; got 0; runtime.cache must be true or false; got 'yes'; runtime.memory_budget must be a "
     "size per worker such as 4GiB, 512MB or a number of bytes, or null; got 'lots'"),
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'bald', 'budget': 1}, 'model': {'factory': 'mlp'}},
     'job j.yaml: 1 error: strategy bald needs at least 2 MC samples; set model.mc_samples >= 2 (got 1)'),
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'entropy', 'budget': 5}, 'seed': 1.0, 'output': '',
      'loop': [], 'stream': 'x', 7: 'int key'},
     "job j.yaml: 5 errors: unknown field '7' (valid: labeled, loop, model, output, pool, runtime, seed, "
     'selection, strategy, stream); seed must be a non-negative integer; got 1.0; output must be a directory '
     "path or null; got ''; loop must be a mapping (see alscale simulate) or null; got []; "
     "stream must be a mapping (see alscale stream) or null; got 'x'"),
    ({'pool': {'path': 'p', 'y': 1}, 'z': 1, 'strategy': {'q': 1, 'name': 'entropy', 'budget': 1}, 'a': 2},
     "job j.yaml: 4 errors: unknown field 'pool.y' (valid under pool: path); unknown field 'z' (valid: labeled, "
     "loop, model, output, pool, runtime, seed, selection, strategy, stream); unknown field 'strategy.q' (valid under "
     'strategy: budget, embedding, name, options, quotas, round, seals, seals_index, seals_mode); unknown field '
     "'a' (valid: labeled, loop, model, output, pool, runtime, seed, selection, strategy, stream)"),
]
LOOP_CASES = [
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'entropy', 'budget': 5},
      'model': {'factory': 'mlp', 'mc_samples': 1}},
     {'test': None},
     'job j.yaml: 3 errors: loop.test must be the path of a held-out pool with features and label; got None; '
     'loop.stop sets no criterion; give at least one of budget, target_accuracy, plateau, max_uncertainty, '
     'max_rounds; loop.train.patience (early stopping) needs validation rows; set loop.validation > 0 or '
     'loop.train.patience: null'),
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'entropy', 'budget': 5}},
     {'zz': 1, 'test': 't', 'stop': {'budget': 10}, 'validation': 5},
     "job j.yaml: 2 errors: unknown field 'loop.zz' (valid under loop: initial, stop, strategies, subsample, "
     'test, train, trials, validation); the loop trains a model each round; add a model section (e.g. factory: '
     'mnist_cnn)'),
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'entropy', 'budget': 5},
      'model': {'factory': 'mlp', 'mc_samples': 1}},
     {'test': 't', 'validation': -1, 'initial': {'size': 0, 'method': 'nope', 'k': 1}, 'subsample': 0,
      'trials': 0, 'train': {'mode': 'warm', 'epochs': 0, 'lr': 0, 'colour': 'red'},
      'stop': {'budget': 0, 'target_accuracy': 2, 'metric': 'x', 'max_uncertainty': 'x', 'plateau': 5, 'q': 1}},
     'job j.yaml: 16 errors: loop.validation must be an integer >= 0 (rows held out for early stopping); got '
     "-1; unknown field 'loop.initial.k' (valid under loop.initial: method, size); loop.initial.size must be an "
     "integer >= 1; got 0; loop.initial.method must be balanced, random or a strategy name; got 'nope'; "
     'loop.subsample must be a positive integer or null; got 0; loop.trials must be an integer >= 1; got 0; '
     "unknown field 'loop.train.colour' (valid under loop.train: batch_size, draws_per_epoch, epochs, "
     'eval_batch_size, lr, mode, patience, weight_decay); loop.train.mode must be one of scratch, finetune; got '
     "'warm'; loop.train.epochs must be an integer >= 1; got 0; loop.train.lr must be a positive number; got 0; "
     "unknown field 'loop.stop.q' (valid under loop.stop: budget, max_rounds, max_uncertainty, metric, plateau, "
     'target_accuracy); loop.stop.budget must be an integer >= 1 or null; got 0; loop.stop.target_accuracy must '
     "be in (0, 1] or null; got 2; loop.stop.metric must be one of test, validation; got 'x'; "
     "loop.stop.max_uncertainty must be a number or null; got 'x'; loop.stop.plateau must be a mapping; got 5"),
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'kcenter', 'budget': 5},
      'model': {'factory': 'mlp', 'mc_samples': 1}},
     {'test': 't', 'strategies': ['bald', 'bald', 'kcenter'],
      'stop': {'max_uncertainty': 0.1, 'metric': 'validation'}, 'train': {'patience': 3}},
     'job j.yaml: 6 errors: loop.strategies names bald more than once; each strategy runs once; '
     'loop.stop.metric is validation but loop.validation is 0; hold out rows or use metric: test; '
     'loop.train.patience (early stopping) needs validation rows; set loop.validation > 0 or '
     'loop.train.patience: null; loop.stop.max_uncertainty reads the top acquisition score, which only a top-k '
     'uncertainty strategy gives; kcenter is not one (drop it or the criterion); strategy bald needs '
     'model.mc_samples >= 2 (got 1); strategy bald needs model.mc_samples >= 2 (got 1)'),
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'entropy', 'budget': 5},
      'model': {'factory': 'mlp', 'mc_samples': 1}},
     {'test': 't', 'strategies': [5, {'name': 'nope'}, {'name': 'power', 'options': {'betta': 1}}],
      'stop': {'max_rounds': 2}, 'validation': 3},
     'job j.yaml: 3 errors: loop.strategies[0] must be a strategy name or a mapping like strategy; got 5; '
     "loop.strategies[1]: unknown strategy 'nope'; valid: {strategies}; loop.strategies[2]: unknown option "
     "'betta' for strategy power; allowed: base, beta"),
]
STREAM_CASES = [
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'kcenter', 'budget': 1}},
     {'budget': 5, 'pacing': 'x', 'threshold': 't', 'step': 1, 'update_every': 0, 'pase': 1, 'train': 5},
     "job j.yaml: 9 errors: unknown field 'stream.pase' (valid: budget, pacing, threshold, step, update_every, "
     'train, oracle); stream.budget must be the fraction of rows to label, in (0, 1]; got 5; stream.pacing must '
     "be one of variable, fixed; got 'x'; stream.threshold must be a number; got 't'; stream.step must be in "
     '[0, 1); got 1; stream.update_every must be a number of labels >= 1 or null; got 0; stream.update_every '
     'retrains the model, but the job has no model; stream.train must be a mapping; got 5; stream selection '
     'scores rows one by one: strategy.name must be a score strategy (entropy, margin, bald, ...), not kcenter'),
    ({'pool': {'path': 'p.arrow'}, 'strategy': {'name': 'entropy', 'budget': 5}},
     {'budget': 0.1, 'update_every': 3},
     'job j.yaml: 1 error: stream.update_every retrains the model, but the job has no model'),
]


def _message(call) -> str | None:
    try:
        call()
    except JobError as exc:
        return str(exc)
    return None


def _expected(text: str | None) -> str | None:
    return None if text is None else text.replace("{strategies}", ", ".join(strategy_names()))


@pytest.mark.parametrize(("raw", "expected"), JOB_CASES)
def test_job_messages_are_those_of_the_old_parser(raw, expected):
    assert _message(lambda: validate_job(raw, source="j.yaml")) == _expected(expected)


@pytest.mark.parametrize(("job", "loop", "expected"), LOOP_CASES)
def test_loop_messages_are_those_of_the_old_parser(job, loop, expected):
    spec = validate_job({**job, "loop": loop}, source="j.yaml")
    assert _message(lambda: parse_loop(spec)) == _expected(expected)


@pytest.mark.parametrize(("job", "stream", "expected"), STREAM_CASES)
def test_stream_messages_are_those_of_the_old_parser(job, stream, expected):
    spec = validate_job({**job, "stream": stream}, source="j.yaml")
    assert _message(lambda: parse_stream(spec, spec.stream)) == _expected(expected)


def test_the_validated_job_reads_as_before():
    job = validate_job({"pool": {"path": "p.arrow"}, "labeled": {"path": "l.csv"},
                        "strategy": {"name": "Max_Entropy", "budget": 3, "seals": 4},
                        "runtime": {"memory_budget": "1.5 KiB", "executor": "local"}, "output": "o"}, source="j.yaml")
    assert (job.pool, job.labeled, job.source, job.strategy.name) == ("p.arrow", "l.csv", "j.yaml", "entropy")
    assert job.runtime.memory_budget == 1536 and job.runtime.shards == 2 and job.model is None
    d = job.to_dict()
    assert d["pool"] == {"path": "p.arrow"} and d["labeled"] == {"path": "l.csv"} and "source" not in d
    assert json.loads(json.dumps(d)) == d
    moved = job.replace(pool="q.arrow", labeled=None, strategy=job.strategy.replace(budget=9))
    assert (moved.pool, moved.labeled, moved.strategy.budget, moved.source) == ("q.arrow", None, 9, "j.yaml")
    assert (job.pool, job.strategy.budget) == ("p.arrow", 3)
    with pytest.raises(JobError, match=r"unknown field 'pool_section' .*; pool is missing"):  # files use the aliases
        validate_job({"pool_section": {"path": "p"}, "strategy": {"name": "entropy", "budget": 1}})


@pytest.mark.parametrize("name", ["power", "objective", "kcenter"])
def test_options_left_out_are_the_strategys_defaults(name):
    from alscale.strategies.registry import check_options

    raw = {"pool": {"path": "p"}, "strategy": {"name": name, "budget": 3}, "model": {"factory": "mlp"},
           "loop": {"test": "t", "strategies": [name], "stop": {"max_rounds": 1}, "validation": 2}}
    job = validate_job(raw)
    assert job.strategy.options == check_options(name, {}) != {}
    assert parse_loop(job).strategies[0].options == check_options(name, {})


def test_a_section_declared_by_another_module_is_validated_and_listed():
    class Review(Section):
        queue: Literal["fast", "careful"] = setting("fast", "one of fast, careful")
        weight: float = setting(1.0, "a number >= 0", ge=0)

    class Job(JobSpec):
        review: Review | None = setting(None, "a mapping or null")

    base = {"pool": {"path": "p"}, "strategy": {"name": "entropy", "budget": 1}}
    job = check_section(Job, {**base, "review": {"weight": 2}}, source="j.yaml")
    assert job.review.weight == 2.0 and job.review.queue == "fast"
    with pytest.raises(JobError) as info:
        check_section(Job, {**base, "review": {"queue": "x", "weight": -1, "w": 1}, "reveiw": 1},
                      source="j.yaml", unknown_first=True)
    assert str(info.value) == (
        "job j.yaml: 4 errors: unknown field 'review.w' (valid under review: queue, weight); unknown field "
        "'reveiw' (valid: labeled, loop, model, output, pool, review, runtime, seed, selection, strategy, stream); "
        "review.queue must be one of fast, careful; got 'x'; review.weight must be a number >= 0; got -1")


def test_the_job_schema_is_printed_and_every_repo_job_conforms(capsys):
    from pathlib import Path

    import yaml

    from alscale.cli import main

    jsonschema = pytest.importorskip("jsonschema")
    assert main(["validate", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    runtime = schema["$defs"]["RuntimeConfig"]["properties"]
    assert runtime["shards"] == {"default": 2, "description": "an integer >= 1", "minimum": 1, "title": "Shards",
                                 "type": "integer"}
    validator = jsonschema.Draft202012Validator(schema)
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "jobs").rglob("*.yaml")) + sorted((root / "examples").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(raw)), path
    bad = {"pool": {"path": "p"}, "strategy": {"name": "entropy", "budget": 0}, "runtime": {"shardz": 2}}
    assert {e.validator for e in validator.iter_errors(bad)} >= {"additionalProperties"}
    assert not validator.is_valid({**bad, "strategy": {"name": "entropy", "budget": 0}, "runtime": {}})


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True), st.text(max_size=8))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=3)),
    max_leaves=8)
_FIELDS = st.sampled_from(["size", "method", "name", "budget", "options", "embedding", "mode", "epochs", "lr",
                           "patience", "plateau", "metric", "max_uncertainty", "epsilon", "rounds", "kind"])
_SECTION = st.one_of(_VALUES, st.dictionaries(_FIELDS, _VALUES, max_size=4),
                     st.lists(st.one_of(_VALUES, st.dictionaries(_FIELDS, _VALUES, max_size=3)), max_size=3))


@settings(max_examples=150, deadline=None)
@example(loop={"stop": {"plateau": {0: None}}}, stream={})  # a non-string key: was a TypeError from Plateau.__init__
@given(st.dictionaries(st.sampled_from(["test", "validation", "initial", "subsample", "trials", "strategies", "train",
                                        "stop", "junk"]), _SECTION, max_size=6),
       st.dictionaries(st.sampled_from(["budget", "pacing", "threshold", "step", "update_every", "train", "oracle",
                                        "junk"]), _SECTION, max_size=6))
def test_loop_and_stream_sections_raise_only_one_line_job_errors(loop, stream):
    job = validate_job({"pool": {"path": "p"}, "strategy": {"name": "entropy", "budget": 2},
                        "model": {"factory": "mlp"}, "loop": loop or None, "stream": stream or None})
    for parse in (lambda: parse_loop(job) if job.loop else None, lambda: parse_stream(job, stream)):
        try:
            parse()
        except JobError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 6000, str(exc)[:300]
