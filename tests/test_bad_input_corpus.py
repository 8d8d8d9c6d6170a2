"""The bad-input corpus: each case is a job the CLI must refuse with one exact, one-line message
(naming the file, column, row or value and the fix), exit code 2, and no output left behind.

Decisions recorded here: a budget above the unlabelled count is capped (not an error; the
README says so); labelled row_ids absent from the pool are an error (a labelled set of
another pool is a mistake).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from alscale.cli import main
from alscale.pool import pool_table, synth_pool, write_table
from tests.conftest import log_softmax

N, D, C, K = 120, 8, 3, 4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    ids = np.arange(N, dtype=np.int64)
    x = rng.normal(size=(N, D)).astype(np.float32)
    lp = log_softmax(rng.normal(size=(N, K, C)))
    emb = rng.normal(size=(N, D)).astype(np.float32)
    f = {}

    def put(name, table, fmt=None):
        path = str(root / name)
        if fmt == "raw":
            (root / name).write_bytes(table)
        else:
            write_table(table, path)
        f[name.split(".")[0]] = path
        return path

    put("good.arrow", pool_table(ids, features_N_D=x, log_probs_N_K_C=lp, embeddings_N_D=emb))
    put("good1.arrow", pool_table(ids, log_probs_N_C=lp[:, 0]))  # K = 1
    put("corrupt.arrow", b"ARROW1 this is not an arrow file" * 10, "raw")
    good_bytes = (root / "good.arrow").read_bytes()
    put("truncipc.arrow", good_bytes[: len(good_bytes) // 2], "raw")
    write_table(pool_table(ids, log_probs_N_C=lp[:, 0]), str(root / "full.parquet"))
    pq_bytes = (root / "full.parquet").read_bytes()
    put("truncpq.parquet", pq_bytes[: len(pq_bytes) - 40], "raw")
    put("featonly.arrow", pool_table(ids, features_N_D=x))
    put("norowid.arrow", pa.table({"features": pool_table(ids, features_N_D=x)["features"]}))
    put("int32rowid.arrow", pool_table(ids, features_N_D=x).set_column(0, "row_id", pa.array(ids, pa.int32())))
    put("duprowid.arrow", pool_table(np.r_[ids[:-1], 5], features_N_D=x))
    put("ragged.arrow", pa.table({"row_id": ids, "features": pa.array([[0.0] * (1 + i % 3) for i in range(N)])}))
    put("strfeat.arrow", pa.table({"row_id": ids, "features": pa.array([str(i) for i in range(N)])}))
    xn = x.copy()
    xn[17, 3] = np.nan
    put("nanfeat.arrow", pool_table(ids, features_N_D=xn))
    lpi = lp.copy()
    lpi[33, 1, 2] = np.inf
    put("inflp.arrow", pool_table(ids, log_probs_N_K_C=lpi))
    embn = emb.copy()
    embn[50, 0] = -np.inf
    put("infemb.arrow", pool_table(ids, embeddings_N_D=embn))
    put("logits.arrow", pool_table(ids, log_probs_N_K_C=lp + 0.5))  # not normalised
    put("empty.arrow", pool_table(ids[:0], features_N_D=x[:0]))
    (root / "dims").mkdir()
    write_table(pool_table(ids[:60], features_N_D=x[:60]), str(root / "dims" / "a.parquet"))
    write_table(pool_table(ids[60:], features_N_D=rng.normal(size=(60, D + 1)).astype(np.float32)),
                str(root / "dims" / "b.parquet"))
    f["dims"] = str(root / "dims")
    pq.write_table(pa.table({"row_id": pa.array([1, 2, 9999], pa.int64())}), root / "absent.parquet")
    f["absent"] = str(root / "absent.parquet")
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64())}), root / "noid.parquet")
    f["noid"] = str(root / "noid.parquet")
    torch.save([1, 2, 3], root / "list.pt")
    f["list_ckpt"] = str(root / "list.pt")
    f["root"] = root
    return f


def _base(pool, **over):
    job = {"pool": {"path": pool}, "strategy": {"name": "entropy", "budget": 5},
           "runtime": {"executor": "local", "shards": 2}, "seed": 0}
    for key, value in over.items():
        node = job
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return job


MLP = {"factory": "mlp", "kwargs": {"num_classes": C, "hidden": 8}, "mc_samples": 1}

# (case id, pool key, job overrides, expected text in the one-line error)
CASES = [
    ("missing pool file", None, {}, "nope.arrow: no such file or directory; check the path"),
    ("corrupt pool file", "corrupt", {}, "corrupt.arrow"),
    ("truncated IPC file", "truncipc", {}, "truncipc.arrow"),
    ("truncated Parquet file", "truncpq", {}, "truncpq.parquet: cannot read it as a Parquet file"),
    ("missing row_id", "norowid", {}, "column 'row_id' is missing; add an int64 column 'row_id'"),
    ("row_id not int64", "int32rowid", {}, "column 'row_id' has type int32, expected int64"),
    ("duplicate row_id", "duprowid", {}, "column 'row_id' has duplicate value 5 at row 5 and row 119"),
    ("ragged features", "ragged", {"model": MLP}, "column 'features' has type list<item: double>"),
    ("features of the wrong type", "strfeat", {"model": MLP}, "column 'features' has type string"),
    ("NaN in features", "nanfeat", {"model": MLP}, "row_id 17"),
    ("inf in log_probs", "inflp", {}, "column 'log_probs' has a non-finite value (inf) at row_id 33"),
    ("inf in embeddings", "infemb", {"strategy": {"name": "kcenter", "budget": 5}},
     "column 'embedding' has a non-finite value (-inf) at row_id 50"),
    ("log_probs that do not normalise", "logits", {}, "has probabilities summing to"),
    ("mismatched dims across files", "dims", {"model": MLP}, "column 'features' has dimension D 9"),
    ("empty pool", "empty", {}, "empty"),
    ("K=1 for a strategy that needs samples", "good1", {"strategy": {"name": "bald", "budget": 5}},
     "needs K >= 2 samples"),
    ("K=1 model for bald", "good", {"model": MLP, "strategy": {"name": "bald", "budget": 5}},
     "needs at least 2 MC samples; set model.mc_samples >= 2"),
    ("budget 0", "good", {"strategy": {"name": "entropy", "budget": 0}},
     "strategy.budget must be a positive integer; got 0"),
    ("budget not an integer", "good", {"strategy": {"name": "entropy", "budget": "ten"}},
     "strategy.budget must be a positive integer; got 'ten'"),
    ("labelled ids absent from the pool", "good", {"labeled": {"path": "ABSENT"}},
     "1 of its 3 row_ids are not in pool"),
    ("labelled file without row_id", "good", {"labeled": {"path": "NOID"}}, "row_id"),
    ("bad factory path", "good", {"model": {"factory": "no_such_pkg.models:net", "mc_samples": 1}},
     "cannot import module 'no_such_pkg.models'"),
    ("factory written with dots", "good", {"model": {"factory": "pkg.module.net"}},
     "looks like an import path; write it as 'package.module:callable'"),
    ("checkpoint that is not a state dict", "good", {"model": {**MLP, "checkpoint": "LIST_CKPT"}}, "state"),
    ("missing checkpoint", "good", {"model": {**MLP, "checkpoint": "/nonexistent/model.pt"}}, "model.pt"),
    ("model input size mismatch", "good", {"model": {"factory": "linear",
                                                     "kwargs": {"num_classes": C, "in_features": 5}}},
     "kwargs give in_features=5 but the pool has 8 features"),
    ("unknown strategy", "good", {"strategy": {"name": "entropyy", "budget": 5}}, "unknown strategy 'entropyy'"),
    ("unknown strategy option", "good", {"strategy": {"name": "power", "budget": 5, "options": {"betta": 1}}},
     "betta"),
    ("unknown YAML key", "good", {"runtime": {"executor": "local", "shardz": 2}}, "unknown field 'runtime.shardz'"),
    ("wrong type in YAML", "good", {"runtime": {"executor": "local", "shards": "two"}},
     "runtime.shards must be an integer >= 1; got 'two'"),
    ("unknown executor", "good", {"runtime": {"executor": "dask"}}, "runtime.executor must be one of local, ray"),
    ("wrong class count in the pool for the model", "good",
     {"model": {**MLP, "kwargs": {"num_classes": 1, "hidden": 8}}}, "num_classes must be an int >= 2"),
    ("no model and no log_probs", "featonly", {}, "has no 'log_probs' column and the job has no model"),
    ("memory budget that is not a size", "good", {"runtime": {"executor": "local", "memory_budget": "lots"}},
     "runtime.memory_budget must be a size per worker such as 4GiB, 512MB or a number of bytes, or null; got 'lots'"),
    ("memory budget below what the strategy keeps", "good",
     {"strategy": {"name": "kcenter", "budget": 5}, "runtime": {"executor": "local", "memory_budget": 100}},
     "runtime.memory_budget 100 B per worker cannot hold what strategy kcenter keeps for a shard of 60 rows"),
    ("cache flag that is not a boolean", "good", {"runtime": {"executor": "local", "cache": "yes please"}},
     "runtime.cache must be true or false; got 'yes please'"),
    # A job file is code; but a factory that is not model code is refused before it is called.
    ("factory that is a builtin (os:system)", "good",
     {"model": {"factory": "os:system", "kwargs": {"command": "touch /tmp/alscale-corpus-pwned"}}},
     "model factory 'os:system' is a builtin_function_or_method, not a Python function or class"),
    ("factory from the standard library", "good", {"model": {"factory": "subprocess:run", "kwargs": {"args": "true"}}},
     "model factory 'subprocess:run' is defined in the Python standard library (subprocess)"),
    ("factory class that is not an nn.Module", "good", {"model": {"factory": "collections:Counter"}},
     "is the class Counter, which is not a torch.nn.Module"),
    ("a huge option value", "good", {"strategy": {"name": "power", "budget": 5, "options": {"beta": ["x"] * 50_000}}},
     "option beta of strategy power must be a positive number; got ['x', 'x', 'x', 'x', 'x', 'x', 'x', 'x', ...]"),
]


@pytest.mark.parametrize(("case", "pool", "over", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly(files, tmp_path, capsys, case, pool, over, expected):
    root = files["root"]
    pool_path = files[pool] if pool else str(root / "nope.arrow")
    job = _base(pool_path, **over)
    for key in ("labeled", "model"):
        node = job.get(key) or {}
        for field in ("path", "checkpoint"):
            if isinstance(node.get(field), str) and node[field].isupper():
                node[field] = files[node[field].lower()]
    out = tmp_path / "out"
    job["output"] = str(out)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    rc = main(["run", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, (case, err)
    assert err.startswith("alscale: error: ") and err.count("\n") == 1, err
    assert expected in err, (case, err)
    assert not out.exists(), case


def test_malformed_yaml_and_missing_job_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: {path: x\nstrategy: [")
    assert main(["run", str(bad)]) == 2
    assert "malformed YAML at line" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_unreachable_ray_address(files, tmp_path):
    """In a fresh process (as users run it; this test process may already hold a Ray)."""
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**_base(files["good"], runtime={"executor": "ray", "address": "127.0.0.1:1"}),
                                    "output": str(tmp_path / "out")}))
    proc = subprocess.run([str(Path(sys.executable).parent / "alscale"), "run", str(path), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_budget_above_the_unlabelled_count_is_capped(files, tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**_base(files["good"], strategy={"name": "entropy", "budget": 10_000}),
                                    "output": str(tmp_path / "out")}))
    assert main(["run", str(path), "--no-progress"]) == 0
    assert pq.read_table(tmp_path / "out" / "selection.parquet").num_rows == N


def test_a_synthetic_pool_passes(tmp_path, capsys):
    """The corpus' good pool shape works end to end (the cases above fail for their one reason)."""
    info = synth_pool(str(tmp_path / "p.arrow"), rows=N, dim=D, classes=C, log_probs_samples=K)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**_base(info.path), "output": str(tmp_path / "out")}))
    assert main(["run", str(path), "--no-progress"]) == 0


def _bomb(levels: int) -> str:
    return "".join([f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}" if i else "lol"] * 9) + "]\n"
                    for i in range(levels + 1)])


# (case id, raw job text -- POOL and OUT are filled in --, overrides, expected text in the one-line error)
RAW_CASES = [
    ("alias bomb in an option value",
     "defs:\n" + "".join("  " + line for line in _bomb(8).splitlines(True))
     + "pool: {path: POOL}\nstrategy: {name: power, budget: 5, options: {beta: *a8}}\noutput: OUT\n", [],
     "refused YAML at line 7, column 7: the value expands to more than 100,000 elements"),
    ("alias bomb in an override", "pool: {path: POOL}\nstrategy: {name: power, budget: 5}\noutput: OUT\n",
     ["strategy.options.beta=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
      "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"],
     "override 'strategy.options.beta': refused YAML"),
    ("duplicate key", "pool: {path: POOL}\nstrategy: {name: entropy, budget: 5}\noutput: OUT\n"
                      "strategy: {name: bald, budget: 5}\n", [],
     "refused YAML at line 4, column 1: duplicate key 'strategy' (lines 2 and 4); keep one"),
    ("duplicate key in the loop section", "pool: {path: POOL}\nstrategy: {name: entropy, budget: 5}\noutput: OUT\n"
                                          "loop:\n  trials: 1\n  trials: 3\n", [],
     "duplicate key 'trials' (lines 5 and 6)"),
    ("nesting too deep", "pool: {path: POOL}\nstrategy: {name: entropy, budget: 5}\noutput: OUT\nseed: "
                         + "[" * 3000 + "]" * 3000 + "\n", [], "nesting deeper than 64 levels"),
    ("job file too large", "pool: {path: POOL}\nstrategy: {name: entropy, budget: 5}\noutput: OUT\n#"
                           + "x" * (1 << 20) + "\n", [], "is larger than the 1,048,576 bytes a job file may have"),
]


@pytest.mark.parametrize(("case", "text", "over", "expected"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_hostile_job_files_are_refused_in_one_short_line(files, tmp_path, capsys, case, text, over, expected):
    out = tmp_path / "out"
    path = tmp_path / "job.yaml"
    path.write_text(text.replace("POOL", files["good"]).replace("OUT", str(out)))
    rc = main(["run", str(path), "--no-progress", *over])
    err = capsys.readouterr().err
    assert rc == 2, (case, err[:500])
    assert err.startswith("alscale: error: ") and err.count("\n") == 1 and len(err) < 600, err[:500]
    assert expected in err, (case, err)
    assert not out.exists(), case

