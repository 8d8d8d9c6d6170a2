"""The ``selection:`` section as a job: a filter, two weighted scores, class quotas and k-center
diversity give the brute-force reference's picks on the local and the Ray executor with 1, 2
and 7 shards (the same ``selection.parquet``, provenance included); bad input is one line
and writes nothing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alscale.errors import AlscaleError
from alscale.jobspec import validate_job
from alscale.pool import pool_table, write_table
from alscale.runtime.coordinator import run_job
from tests.conftest import log_softmax
from tests.strategies.objective_reference import reference

SELECTION = {
    "budget": 40,
    "filters": ["entropy >= 0.5", "source in [camera_a, dashcam, drone]"],
    "scores": [{"name": "entropy", "weight": 1.0}, {"name": "margin", "weight": 0.5},
               {"column": "quality", "weight": 0.2, "normalize": "minmax"}],
    "constraints": {"by": "predicted_class", "min": {4: 6}, "max": 10},
    "diversity": {"kind": "kcenter", "weight": 1.0},
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    rng = np.random.default_rng(19)
    n = 1500
    ids = rng.permutation(3 * n)[:n].astype(np.int64)
    lp = log_softmax(rng.normal(size=(n, 2, 6)) * 2)
    emb = ((rng.normal(size=(8, 8)) * 3)[rng.integers(0, 8, n)] + rng.normal(size=(n, 8))).astype(np.float32)
    source = np.array(["camera_a", "camera_b", "dashcam", "drone"],
                      dtype=object)[rng.choice(4, n, p=[.5, .3, .17, .03])]
    quality = np.round(rng.random(n), 3)
    root = tmp_path_factory.mktemp("objective-job")
    table = pool_table(ids, log_probs_N_K_C=lp, embeddings_N_D=emb)
    table = table.append_column("source", pa.array(source.tolist())).append_column("quality", pa.array(quality))
    write_table(table, str(root / "pool.arrow"))
    labeled = np.sort(ids[::37])
    (root / "labeled.csv").write_text("row_id\n" + "\n".join(map(str, labeled)) + "\n")
    return root, ids, lp, emb, {"source": source, "quality": quality}, labeled


def _job(root, executor, shards, selection=SELECTION):
    return validate_job({"pool": {"path": str(root / "pool.arrow")}, "labeled": {"path": str(root / "labeled.csv")},
                         "selection": selection, "seed": 2, "runtime": {"executor": executor, "shards": shards}},
                        source="objective.yaml")


@pytest.mark.ray
def test_selection_job_is_the_reference_on_local_and_ray_for_1_2_7_shards(pool, ray_session, tmp_path):
    root, ids, lp, emb, columns, labeled = pool
    job = _job(root, "local", 1)
    want, _ = reference(ids, lp, emb, columns, labeled, job.strategy.options, 40, seed=2)
    first = None
    for executor in ("local", "ray"):
        for shards in (1, 2, 7):
            res = run_job(_job(root, executor, shards), out_dir=tmp_path / f"{executor}-{shards}", progress=False)
            table = pq.read_table(tmp_path / f"{executor}-{shards}" / "selection.parquet")
            np.testing.assert_array_equal(table["row_id"].to_numpy(), want, err_msg=f"{executor}, {shards} shards")
            if first is None:
                first = table
                m = res.manifest["selection"]
                assert m["constraints"]["picks_per_group"]["4"] >= 6
                assert max(m["constraints"]["picks_per_group"].values()) <= 10
                assert set(m["seconds"]) >= {"scores", "filters", "normalize", "constraints", "diversity"}
                assert res.manifest["job"]["selection"]["budget"] == 40  # the job as written: a selection
            assert table.equals(first), (executor, shards)
    assert first.column_names == ["row_id", "rank", "score", "strategy", "round", "filter", "score_entropy",
                                  "score_margin", "score_quality", "combined", "group", "distance"]
    assert set(first["filter"].to_pylist()) == {"filters"} and first["strategy"][0].as_py() == "objective"


@pytest.mark.parametrize("selection, message", [
    ({**SELECTION, "filters": ["qualty >= 0.2"]},
     r"pool .* has no column 'qualty' \(columns: .*\); name a column of the pool"),
    ({**SELECTION, "filters": ["source >= 3"]},
     r"selection.filters\[0\].where\[0\]: '>=' compares numbers but column 'source' holds strings"),
    ({**SELECTION, "scores": [{"column": "source"}]},
     r"selection.scores\[0\].column: column 'source' holds strings; a score column holds numbers"),
    ({**SELECTION, "constraints": {"by": "quality", "max": 3}},
     r"selection.constraints.by: column 'quality' of pool .* has type double; groups need an integer or string"),
])
def test_selection_that_does_not_fit_the_pool_writes_nothing(pool, tmp_path, selection, message):
    root = pool[0]
    with pytest.raises(AlscaleError, match=message):
        run_job(_job(root, "local", 2, selection), out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_refuses_a_bad_selection_in_one_line(pool, tmp_path):
    root = pool[0]
    (tmp_path / "job.yaml").write_text(
        f"pool: {{path: {root / 'pool.arrow'}}}\n"
        "selection:\n  budget: 10\n  filters: ['entropy >= high']\n  scores: [{name: entropy, weight: x}]\n"
        "  diversity: {kind: threshold}\n")
    proc = subprocess.run([sys.executable, "-m", "alscale.cli", "run", str(tmp_path / "job.yaml"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "3 errors" in line, line
    assert "selection.filters[0].where[0]: '>=' compares with a number; got 'high'" in line
    assert "selection.scores[0].weight: must be a number; got 'x'" in line
    assert "selection.diversity: kind threshold needs 'radius'" in line
    assert not (tmp_path / "out").exists()


def test_report_shows_the_mix(pool, tmp_path):
    from alscale.workflow.report import build_report

    root = pool[0]
    sel = {**SELECTION, "filters": [{"name": "uncertain", "where": ["entropy >= 1.2"]},
                                    {"name": "rare", "where": ["source == drone"]}],
           "constraints": {"by": "source", "max": {"camera_a": 12}}}
    res = run_job(_job(root, "local", 2, sel), out_dir=tmp_path / "out", progress=False)
    import hashlib

    inputs = res.manifest["inputs"]  # the exact versions: pool files, labelled set, embeddings' source
    assert inputs["labeled"]["files"][0]["sha256"] == hashlib.sha256((root / "labeled.csv").read_bytes()).hexdigest()
    assert inputs["pool"]["files"][0]["sha256"] == hashlib.sha256((root / "pool.arrow").read_bytes()).hexdigest()
    assert inputs["embeddings"]["source"] == "column" and inputs["model"] is None
    page = build_report(tmp_path / "out").read_text()
    for title in ("Mix", "Score components", "Diversity", "Selection stages"):
        assert f"<h2>{title}</h2>" in page, title
    per_group = res.manifest["selection"]["constraints"]["picks_per_group"]
    table = pq.read_table(tmp_path / "out" / "selection.parquet").to_pydict()
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(per_group.items(), key=lambda kv: (-kv[1], kv[0])) if v)
    assert f"<th>picks per group</th><td>{shown}</td>" in page
    rules = {r: table["filter"].count(r) for r in ("uncertain", "rare") if r in table["filter"]}
    assert sum(rules.values()) == 40 and per_group["camera_a"] <= 12
    assert "picks per filter</th><td>" + ", ".join(f"{k}: {v}" for k, v in sorted(
        rules.items(), key=lambda kv: (-kv[1], kv[0]))) in page


def test_selection_under_a_memory_budget_is_refused_in_one_line(pool, tmp_path):
    root = pool[0]
    job = validate_job({"pool": {"path": str(root / "pool.arrow")}, "selection": SELECTION,
                        "runtime": {"executor": "local", "shards": 2, "memory_budget": "64MiB"}})
    with pytest.raises(AlscaleError, match="strategy objective does not run under runtime.memory_budget; set "
                                           "runtime.memory_budget: null"):
        run_job(job, out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_strategy_form_is_the_same_objective_and_refuses_strategy_quotas(pool, tmp_path):
    root = pool[0]
    options = {k: v for k, v in SELECTION.items() if k != "budget"}
    base = {"pool": {"path": str(root / "pool.arrow")}, "labeled": {"path": str(root / "labeled.csv")}, "seed": 2,
            "runtime": {"executor": "local", "shards": 2}}
    a = run_job(validate_job({**base, "strategy": {"name": "objective", "budget": 40, "options": options}}),
                out_dir=tmp_path / "a", progress=False)
    b = run_job(_job(root, "local", 2), out_dir=tmp_path / "b", progress=False)
    assert a.selection.indices_B.tolist() == b.selection.indices_B.tolist()
    with pytest.raises(AlscaleError, match="strategy.quotas work with the score-based strategies, kcenter and badge, "
                                           "not objective"):  # its constraints are in its options
        validate_job({**base, "strategy": {"name": "objective", "budget": 5, "quotas": {"max": 2}}})
