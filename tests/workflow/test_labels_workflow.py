"""Export a selection for annotators; import their labels (CSV, JSON lines, Label Studio) into a
ledger; run the next job with the ledger as its labelled set."""

from __future__ import annotations

import base64
import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from alscale.cli import main
from alscale.jobspec import validate_job
from alscale.loop.ledger import Ledger
from alscale.pool import mnist_pool
from alscale.runtime.coordinator import run_job


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    pool = root / "img.arrow"
    mnist_pool(str(pool), rows=400, images=True)
    job = {"pool": {"path": str(pool)}, "model": {"factory": "mnist_cnn", "mc_samples": 1, "transform": "pixels"},
           "strategy": {"name": "entropy", "budget": 12}, "runtime": {"executor": "local", "shards": 2}, "seed": 1}
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    run_job(validate_job(job), out_dir=root / "out", progress=False)
    return root, pool


def test_export_formats_carry_the_rows_and_their_images(selected, tmp_path, capsys):
    root, pool = selected
    sel = pq.read_table(root / "out" / "selection.parquet").to_pylist()
    assert main(["labels", "export", str(root / "out"), str(tmp_path / "b.csv")]) == 0
    with open(tmp_path / "b.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["row_id"]) for r in rows] == [r["row_id"] for r in sel]
    assert [int(r["rank"]) for r in rows] == list(range(1, 13))
    png = base64.b64decode(rows[0]["image"].split(",", 1)[1])
    assert rows[0]["image"].startswith("data:image/png;base64,") and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["labels", "export", str(root / "out"), str(tmp_path / "b.jsonl")]) == 0
    with open(tmp_path / "b.jsonl") as f:
        lines = [json.loads(x) for x in f]
    assert [x["row_id"] for x in lines] == [r["row_id"] for r in sel] and lines[0]["strategy"] == "entropy"
    assert main(["labels", "export", str(root / "out"), str(tmp_path / "ls.json")]) == 0
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert [t["id"] for t in tasks] == [r["row_id"] for r in sel]
    assert tasks[0]["data"]["image"].startswith("data:image/png") and tasks[0]["data"]["row_id"] == sel[0]["row_id"]
    assert main(["labels", "export", str(tmp_path), str(tmp_path / "x.csv")]) == 2
    assert "holds no finished selection" in capsys.readouterr().err


def _label_studio_export(tasks, label_of):
    """What Label Studio's JSON export looks like for a Choices labelling config."""
    out = []
    for t in tasks:
        out.append({"id": t["id"] + 1000, "data": t["data"], "annotations": [
            {"id": 1, "was_cancelled": False, "updated_at": "2026-11-27T10:00:00Z",
             "result": [{"from_name": "digit", "to_name": "image", "type": "choices",
                         "value": {"choices": [label_of(t["data"]["row_id"])]}}]}]})
    return out


def test_labels_come_back_into_a_ledger_and_feed_the_next_job(selected, tmp_path, capsys):
    root, pool = selected
    sel = [r["row_id"] for r in pq.read_table(root / "out" / "selection.parquet").to_pylist()]
    from alscale.pool import read_shard
    from alscale.types import ShardSpec

    d = read_shard(ShardSpec(str(pool), 0, 0, 400), ["label"])
    truth = {int(r): int(y) for r, y in zip(d.row_ids_N, d.labels_N)}
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert main(["labels", "export", str(root / "out"), str(tmp_path / "ls.json")]) == 0
    tasks = json.loads((tmp_path / "ls.json").read_text())
    capsys.readouterr()
    # Half the batch comes back from Label Studio (named classes), the rest as CSV.
    (tmp_path / "ls-export.json").write_text(json.dumps(_label_studio_export(tasks[:6], lambda r: names[truth[r]])))
    ledger = tmp_path / "ledger"
    assert main(["labels", "import", str(tmp_path / "ls-export.json"), "--ledger", str(ledger), "--pool", str(pool),
                 "--classes", ",".join(names), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"added": 6, "already": 0, "round": 0,
                                                   "file": str(ledger / "round-00000.parquet")}
    csv_file = tmp_path / "rest.csv"
    csv_file.write_text("row_id,label\n" + "".join(f"{r},{truth[r]}\n" for r in sel[5:]))  # one overlap
    assert main(["labels", "import", str(csv_file), "--ledger", str(ledger), "--pool", str(pool),
                 "--num-classes", "10"]) == 0
    assert "imported 6 labels" in capsys.readouterr().out
    led = Ledger(ledger)
    assert sorted(led.row_ids.tolist()) == sorted(sel) and led.rounds == [0, 1]
    assert all(truth[int(r)] == int(y) for r, y in zip(led.row_ids, led.labels))
    # Importing the same file again changes nothing.
    assert main(["labels", "import", str(csv_file), "--ledger", str(ledger), "--pool", str(pool)]) == 0
    assert "imported 0 labels" in capsys.readouterr().out and Ledger(ledger).rounds == [0, 1]
    # The next job takes the ledger as its labelled set: none of these rows is picked again.
    job = yaml.safe_load((root / "job.yaml").read_text())
    job["labeled"] = {"path": str(ledger)}
    nxt = run_job(validate_job(job), out_dir=tmp_path / "next", progress=False)
    assert nxt.manifest["pool"]["n_labeled"] == 12 and not set(nxt.selection.indices_B.tolist()) & set(sel)


@pytest.mark.parametrize("content, name, extra, message", [
    ("row_id,label\n999999,3\n", "a.csv", [], "a.csv line 2: row_id 999999 is not in pool"),
    ("row_id,label\n1,12\n", "a.csv", ["--num-classes", "10"], "label '12' of row_id 1 is not a class (integers 0..9)"),
    ("row_id,label\n1,3\n1,4\n", "a.csv", [], "a.csv line 3: row_id 1 is labelled 4 here and 3 at line 2"),
    ('{"row_id": 1, "label": "cat"}\n', "a.jsonl", ["--classes", "dog,bird"],
     "a.jsonl line 1: label 'cat' of row_id 1 is not a class (dog, bird)"),
    ("id,label\n1,3\n", "a.csv", [], "the header must name 'row_id' and 'label' columns"),
    ('[{"id": 5, "data": {}}]', "a.json", [], "a.json task 5: data.row_id is missing"),
    ("row_id,label\n1,3\n", "a.txt", [], "cannot tell the format from the name"),
])
def test_bad_label_files_are_one_line_errors_and_write_nothing(selected, tmp_path, capsys, content, name, extra,
                                                               message):
    _, pool = selected
    f = tmp_path / name
    f.write_text(content)
    ledger = tmp_path / "ledger"
    assert main(["labels", "import", str(f), "--ledger", str(ledger), "--pool", str(pool), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not ledger.exists() or not list(ledger.glob("round-*"))


def test_a_label_that_contradicts_the_ledger_is_refused(selected, tmp_path, capsys):
    _, pool = selected
    ledger = tmp_path / "ledger"
    Ledger(ledger).append(np.array([1, 2]), np.array([3, 4]), 0, "earlier")
    f = tmp_path / "l.csv"
    f.write_text("row_id,label\n2,5\n")
    assert main(["labels", "import", str(f), "--ledger", str(ledger), "--pool", str(pool)]) == 2
    assert "row_id 2 is labelled 5 here but 4 in ledger" in capsys.readouterr().err
