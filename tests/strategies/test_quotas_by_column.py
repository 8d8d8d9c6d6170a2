"""Quotas by any pool column (``strategy.quotas.by``): the brute-force constrained greedy over the
column's groups, the same for every sharding, local and Ray, and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from alscale.errors import AlscaleError
from alscale.strategies import FanoutShards, InProcessFanout, ShardState, scores
from alscale.strategies.quotas import _bounds, select_with_quotas
from tests.conftest import log_softmax
from tests.strategies.test_kcenter import kcenter_quota_reference
from tests.strategies.test_quotas import quota_reference

SOURCES = np.array(["cam_b", "cam_a", "drone", "phone"], dtype=object)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    n = 600
    ids = rng.permutation(4 * n)[:n].astype(np.int64)
    lp = log_softmax(rng.normal(size=(n, 1, 5)) * 2)
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    # 'drone' rare (about 3%), the others common; an integer column with gaps in its values
    src = SOURCES[np.where(rng.random(n) < 0.03, 2, rng.choice([0, 1, 3], n))]
    camera = rng.choice([3, 40, 7], n).astype(np.int64)
    return ids, lp, emb, src, camera


def shards_with(ids, lp, emb, columns, n_shards, labeled=()):
    bounds = np.linspace(0, ids.shape[0], n_shards + 1).astype(int)
    states = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        st = ShardState(ids[a:b], lp[a:b], emb[a:b])
        st.columns.update({k: v[a:b] for k, v in columns.items()})
        states.append(st)
    shards = FanoutShards(InProcessFanout(states))
    shards.exclude(np.asarray(labeled, np.int64))
    return shards


def codes_of(values):
    order = sorted(set(values.tolist()))
    return np.array([order.index(v) for v in values.tolist()]), order


@pytest.mark.parametrize("column, quotas", [
    ("source", {"min": {"drone": 8}, "max": {"cam_a": 3}}),
    ("source", {"max": 6}),
    ("source", {"min": {"drone": 40}}),  # more than 'drone' has: all of it, reported unmet
    ("camera", {"min": {40: 10, "7": 5}, "max": {3: 2}}),  # integer column; YAML may give keys as strings
])
def test_quotas_by_a_column_are_the_constrained_greedy(data, column, quotas):
    ids, lp, emb, src, camera = data
    values = src if column == "source" else camera
    cls, order = codes_of(values)
    labeled = ids[::7]
    keep = ~np.isin(ids, labeled)
    budget = 30
    spec = {k: ({order.index(int(g) if column == "camera" else g): v for g, v in q.items()}
                if isinstance(q, dict) else q) for k, q in quotas.items()}
    lo = _bounds(spec.get("min"), len(order), "min")
    hi = _bounds(spec.get("max"), len(order), "max")
    want, want_counts = quota_reference(scores.margin(lp)[keep], ids[keep], cls[keep], budget, lo, hi)
    for n_shards in (1, 2, 7):
        shards = shards_with(ids, lp, emb, {"source": src, "camera": camera}, n_shards, labeled)
        res = select_with_quotas(shards, "margin", budget, {**quotas, "by": column}, page=2)
        assert res.selection.indices_B.tolist() == want, n_shards
        assert res.counts == want_counts.tolist() and res.groups == order
    if quotas == {"min": {"drone": 40}}:
        have = int(np.count_nonzero(src[keep] == "drone"))
        assert res.unmet == {"drone": 40 - have} and res.counts[order.index("drone")] == have


def test_kcenter_and_badge_quotas_by_a_column(data):
    ids, lp, emb, src, _ = data
    cls, order = codes_of(src)
    labeled = ids[::40]
    quotas = {"min": {"drone": 4}, "max": {"cam_b": 2}, "by": "source"}
    lo = np.array([0, 0, 4, 0])
    hi = np.array([10**18, 2, 10**18, 10**18])
    want = kcenter_quota_reference(ids, emb, cls, labeled, 16, lo, hi)
    badge = []
    for n_shards in (1, 7):
        shards = shards_with(ids, lp, emb, {"source": src}, n_shards, labeled)
        assert select_with_quotas(shards, "kcenter", 16, quotas).selection.indices_B.tolist() == want
        shards = shards_with(ids, lp, emb, {"source": src}, n_shards, labeled)
        badge.append(select_with_quotas(shards, "badge", 16, quotas, seed=2))
    assert badge[0].selection.indices_B.tolist() == badge[1].selection.indices_B.tolist()
    got = dict(zip(ids.tolist(), src.tolist()))
    picked = [got[r] for r in badge[0].selection.indices_B.tolist()]
    assert picked.count("drone") >= 4 and picked.count("cam_b") <= 2 and len(picked) == 16


def test_bad_quota_specs_in_memory(data):
    ids, lp, emb, src, camera = data
    shards = shards_with(ids, lp, emb, {"source": src}, 2)
    with pytest.raises(AlscaleError, match=r"strategy.quotas.min: 'boat' is not a value of column 'source' "
                                           r"\(values: cam_a, cam_b, drone, phone\)"):
        select_with_quotas(shards, "entropy", 10, {"min": {"boat": 1}, "by": "source"})
    with pytest.raises(AlscaleError, match="column 'source' has more than 3 distinct values"):
        select_with_quotas(shards, "entropy", 10, {"max": 1, "by": "source", "max_groups": 3})
    with pytest.raises(AlscaleError, match="column 'camera' was not read on this shard"):
        select_with_quotas(shards, "entropy", 10, {"max": 1, "by": "camera"})
    with pytest.raises(AlscaleError, match="strategy.quotas.by must name a pool column"):
        select_with_quotas(shards, "entropy", 10, {"max": 1, "by": 3})
    with pytest.raises(AlscaleError, match="strategy.quotas.max_groups must be a positive integer"):
        select_with_quotas(shards, "entropy", 10, {"max": 1, "by": "source", "max_groups": 0})


def _pool(tmp_path, data, name="pool.arrow", source=None):
    from alscale.pool import pool_table, write_table

    ids, lp, emb, src, camera = data
    table = pool_table(ids, log_probs_N_K_C=lp, embeddings_N_D=emb)
    table = table.append_column("source", pa.array(src.tolist() if source is None else source))
    table = table.append_column("camera", pa.array(camera, pa.int32()))
    table = table.append_column("weight", pa.array(np.ones(ids.size)))
    path = tmp_path / name
    write_table(table, str(path))
    return path


def test_job_quotas_by_a_column_are_shard_and_executor_invariant(data, tmp_path, ray_session):
    from alscale.jobspec import validate_job
    from alscale.runtime.coordinator import run_job

    pool = _pool(tmp_path, data)
    sels = {}
    for executor, shards in (("local", 1), ("local", 7), ("ray", 2)):
        job = validate_job({"pool": {"path": str(pool)},
                            "strategy": {"name": "entropy", "budget": 24,
                                         "quotas": {"by": "source", "min": {"drone": 6}, "max": 8}},
                            "runtime": {"executor": executor, "shards": shards}})
        res = run_job(job, out_dir=tmp_path / f"{executor}{shards}", progress=False)
        sels[executor, shards] = res.selection.indices_B.tolist()
        per = res.manifest["quotas"]["picks_per_group"]
        assert per["drone"] >= 6 and max(per.values()) <= 8 and sum(per.values()) == 24
    assert sels["local", 1] == sels["local", 7] == sels["ray", 2]


@pytest.mark.parametrize("quotas, message", [
    ({"by": "sourc", "max": 2}, "strategy.quotas.by: pool .* has no column 'sourc' .*; name an integer or string "
                                "column of the pool"),
    ({"by": "weight", "max": 2}, "strategy.quotas.by: column 'weight' of pool .* has type double; groups need an "
                                 "integer or string column"),
])
def test_job_with_a_bad_group_column_writes_nothing(data, tmp_path, quotas, message):
    from alscale.jobspec import validate_job
    from alscale.runtime.coordinator import run_job

    pool = _pool(tmp_path, data)
    job = validate_job({"pool": {"path": str(pool)}, "strategy": {"name": "entropy", "budget": 5, "quotas": quotas},
                        "runtime": {"executor": "local", "shards": 2}})
    with pytest.raises(AlscaleError, match=message):
        run_job(job, out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "selection.parquet").exists()


def test_null_group_values_name_the_row(data, tmp_path):
    from alscale.jobspec import validate_job
    from alscale.runtime.coordinator import run_job

    ids, *_ = data
    src = data[3].tolist()
    src[123] = None
    pool = _pool(tmp_path, data, "nulls.arrow", source=src)
    job = validate_job({"pool": {"path": str(pool)},
                        "strategy": {"name": "entropy", "budget": 5, "quotas": {"by": "source", "max": 2}},
                        "runtime": {"executor": "local", "shards": 2}})
    with pytest.raises(AlscaleError, match=f"column 'source' is null at row_id {int(ids[123])}; groups need a value "
                                           "on every row"):
        run_job(job, out_dir=tmp_path / "out", progress=False)


def test_job_spec_checks_the_by_field():
    from alscale.jobspec import JobError, validate_job

    with pytest.raises(JobError, match="strategy.quotas.by must name a pool column"):
        validate_job({"pool": {"path": "p.arrow"}, "strategy": {"name": "entropy", "budget": 5,
                                                                "quotas": {"by": ["a"], "max": 1}}})
    with pytest.raises(JobError, match="strategy.quotas must be a mapping with 'min' and/or 'max'"):
        validate_job({"pool": {"path": "p.arrow"}, "strategy": {"name": "entropy", "budget": 5,
                                                                "quotas": {"by": "source"}}})
