"""Stream-based selective sampling: the pacing rule, budget adherence, decisions and ledger on
disk, model updates every n labels, and clear errors."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from alscale.cli import main
from alscale.errors import JobError
from alscale.jobspec import validate_job
from alscale.loop.ledger import Ledger
from alscale.pool import mnist_pool, pool_table, write_table
from alscale.workflow.stream import StreamSpec, decide, run_stream
from tests.conftest import log_softmax


def test_variable_uncertainty_rule_by_hand():
    spec = StreamSpec(budget=0.5, pacing="variable", threshold=1.0, step=0.5)
    q, thr, theta, spent = decide(np.array([2.0, 2.0, 0.1, 0.1, 5.0]), threshold=1.0, spent=0, seen=0, spec=spec)
    # t=1: 0 < 0.5 and 2 >= 1 -> query, θ 1.5; t=2: 1 < 1.0? no -> budget blocks (θ kept);
    # t=3: 1 < 1.5, 0.1 < 1.5 -> skip, θ 0.75; t=4: 1 < 2, 0.1 < 0.75 -> skip, θ 0.375;
    # t=5: 1 < 2.5, 5 >= 0.375 -> query.
    assert q.tolist() == [True, False, False, False, True]
    assert thr.tolist() == [1.0, 1.5, 1.5, 0.75, 0.375] and spent == 2 and theta == pytest.approx(0.5625)
    fixed = StreamSpec(budget=1.0, pacing="fixed", threshold=1.0, step=0.5)
    assert decide(np.array([2.0, 0.5]), threshold=1.0, spent=0, seen=0, spec=fixed)[0].tolist() == [True, False]


@pytest.fixture(scope="module")
def lp_pool(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 5000
    path = tmp_path_factory.mktemp("stream") / "lp.arrow"
    log_probs_N_K_C = log_softmax(rng.normal(size=(n, 1, 4)) * 3)
    write_table(pool_table(np.arange(n, dtype=np.int64) + 100, log_probs_N_K_C=log_probs_N_K_C,
                           labels_N=rng.integers(0, 4, n)), str(path), rows_per_batch=700)
    return path


def _job(pool, out, **stream):
    return validate_job({"pool": {"path": str(pool)}, "strategy": {"name": "entropy", "budget": 1},
                         "runtime": {"executor": "local", "chunk_rows": 512}, "output": str(out),
                         "stream": {"budget": 0.05, "threshold": 0.5, "step": 0.02, **stream}})


def test_the_stream_spends_its_budget_over_the_whole_stream(lp_pool, tmp_path):
    s = run_stream(_job(lp_pool, tmp_path / "out"), progress=False)
    dec = pq.read_table(tmp_path / "out" / "decisions.parquet").to_pydict()
    assert dec["position"] == list(range(5000)) and dec["row_id"][0] == 100
    q = np.array(dec["queried"])
    assert s["queried"] == q.sum() <= 0.05 * 5000 and q.sum() >= 0.04 * 5000
    spent = np.array(dec["spent"])
    assert (spent <= 0.05 * np.arange(1, 5001) + 1).all()  # never ahead of the pace
    assert q[2500:].sum() > 0.3 * q.sum()  # spending follows the stream, not only its start
    led = Ledger(tmp_path / "out" / "ledger")
    assert sorted(led.row_ids.tolist()) == sorted(np.array(dec["row_id"])[q].tolist())
    # Same job, same decisions.
    run_stream(_job(lp_pool, tmp_path / "again"), progress=False)
    assert pq.read_table(tmp_path / "again" / "decisions.parquet").equals(
        pq.read_table(tmp_path / "out" / "decisions.parquet"))


def test_model_updates_every_n_labels(tmp_path):
    pool = tmp_path / "mnist.arrow"
    mnist_pool(str(pool), rows=1500)
    job = {"pool": {"path": str(pool)}, "model": {"factory": "linear", "kwargs": {"num_classes": 10}},
           "strategy": {"name": "margin", "budget": 1}, "runtime": {"executor": "local", "chunk_rows": 100},
           "stream": {"budget": 0.1, "threshold": 0.2, "update_every": 30,
                      "train": {"epochs": 3, "draws_per_epoch": 256, "batch_size": 32}}, "output": str(tmp_path / "o")}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["stream", str(tmp_path / "job.yaml"), "--json"]) == 0
    led = Ledger(tmp_path / "o" / "ledger")
    assert len(led.rounds) >= 3 and len(led) <= 150
    dec = pq.read_table(tmp_path / "o" / "decisions.parquet").to_pydict()
    # After the first update the scores change (a trained model), so chunks scored later differ
    # from what the untrained model gave.
    assert np.std(dec["score"][:100]) != pytest.approx(np.std(dec["score"][-100:]))


def test_stream_errors(lp_pool, tmp_path, capsys):
    with pytest.raises(JobError, match=r"stream.budget must be the fraction of rows to label, in \(0, 1\]; got 5"):
        from alscale.workflow.stream import parse_stream

        parse_stream(_job(lp_pool, tmp_path / "o", budget=5), _job(lp_pool, tmp_path / "o", budget=5).stream)
    job = {"pool": {"path": str(lp_pool)}, "strategy": {"name": "kcenter", "budget": 1}, "stream": {"budget": 0.1,
                                                                                                   "pase": 1}}
    (tmp_path / "j.yaml").write_text(yaml.safe_dump(job))
    assert main(["stream", str(tmp_path / "j.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'stream.pase'" in err and "must be a score strategy" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_hybrid_oracle_in_the_stream_routes_sure_rows_to_the_machine(lp_pool, tmp_path):
    """Confident rows (low entropy) to a labelling program, uncertain ones to people (who have
    already answered, through the ledger the human oracle watches)."""
    import sys

    prog = tmp_path / "machine.py"
    prog.write_text("import json, sys\nfor l in sys.stdin:\n    r = json.loads(l)\n"
                    "    print(json.dumps({'row_id': r['row_id'], 'label': r['row_id'] % 4}))\n")
    people_ledger = tmp_path / "people"
    ids = np.arange(5000, dtype=np.int64) + 100
    Ledger(people_ledger).append(ids, (ids + 1) % 4, 0, "annotators")  # everything pre-answered
    job = _job(lp_pool, tmp_path / "out", threshold=0.3, budget=0.2,
               oracle={"kind": "hybrid", "threshold": 0.9,
                       "machine": {"kind": "command", "command": [sys.executable, str(prog)]},
                       "people": {"kind": "human", "ledger": str(people_ledger), "poll_s": 0.01}})
    s = run_stream(job, progress=False)
    dec = pq.read_table(tmp_path / "out" / "decisions.parquet").to_pydict()
    q = np.array(dec["queried"])
    oracle = np.array(dec["oracle"])
    score = np.array(dec["score"])
    assert set(oracle[q]) == {"command", "human"} and (oracle[~q] == "").all()
    assert (score[q & (oracle == "command")] < 0.9).all() and (score[q & (oracle == "human")] >= 0.9).all()
    led = Ledger(tmp_path / "out" / "ledger")
    got = dict(zip(led.row_ids.tolist(), led.labels.tolist()))
    row = np.array(dec["row_id"])
    for r, o in zip(row[q].tolist(), oracle[q].tolist()):
        assert got[r] == (r % 4 if o == "command" else (r + 1) % 4)
    assert s["queried"] == q.sum()
