"""SEALS with a kept neighbour structure: every round's candidates equal from-scratch exact
SEALS for any sharding, a round searches only its new (or exhausted) labelled rows, and a
structure that does not describe the pool is refused."""

from __future__ import annotations

import numpy as np
import pytest

from alscale.runtime.seals_store import apply_seals_kept, load_kept
from alscale.strategies import FanoutShards, InProcessFanout, ShardState
from alscale.strategies.seals import seals_candidates

N = 1500


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, 8)).astype(np.float32)
    x[10] = x[20]
    return np.arange(N, dtype=np.int64) * 2 + 1, x


def _shards(ids, x, n_shards, labeled):
    b = np.linspace(0, N, n_shards + 1).astype(int)
    sh = FanoutShards(InProcessFanout([ShardState(ids[b[s]:b[s + 1]], None, x[b[s]:b[s + 1]])
                                       for s in range(n_shards)]))
    sh.exclude(labeled)
    return sh


def _eligible(sh):
    return np.sort(np.concatenate([w.row_ids_N[w.eligible_N] for w in sh.fanout.workers]))


@pytest.mark.parametrize("n_shards", [1, 2, 7])
def test_kept_rounds_equal_exact_seals(tmp_path, n_shards):
    ids, x = _data()
    rng = np.random.default_rng(1)
    labeled = ids[rng.choice(N, 60, replace=False)]
    for rnd in range(3):
        ref = seals_candidates(_shards(ids, x, 2, labeled), 4)
        sh = _shards(ids, x, n_shards, labeled)
        n_cand, info = apply_seals_kept(sh, 4, str(tmp_path), "exact")
        np.testing.assert_array_equal(_eligible(sh), ref)
        assert n_cand == ref.shape[0]
        if rnd == 0:
            assert info["searched"] == 60 and info["reused"] == 0
        else:  # the new labels, plus the few earlier ones whose kept lists ran short
            assert info["searched"] >= 40 and info["reused"] >= 60 + 40 * (rnd - 1) - (info["searched"] - 40)
            assert info["searched"] + info["reused"] == 60 + 40 * rnd
        labeled = np.concatenate([labeled, np.setdiff1d(ref, labeled)[:40]])
    assert load_kept(str(tmp_path)).labeled_ids_L.shape[0] == 60 + 2 * 40


def test_kept_structure_of_other_embeddings_is_refused(tmp_path):
    ids, x = _data()
    labeled = ids[:50]
    apply_seals_kept(_shards(ids, x, 2, labeled), 3, str(tmp_path), "exact")
    x2 = x.copy()
    x2[:50] += 1.0
    sh = _shards(ids, x2, 2, labeled)
    _, info = apply_seals_kept(sh, 3, str(tmp_path), "exact")
    assert "embeddings differ" in info["refused"] and info["searched"] == 50
    np.testing.assert_array_equal(_eligible(sh), seals_candidates(_shards(ids, x2, 2, labeled), 3))


def test_approximate_seals_is_named_and_mostly_agrees(tmp_path):
    pytest.importorskip("faiss")
    ids, x = _data()
    labeled = ids[::30]
    sh = _shards(ids, x, 2, labeled)
    _, info = apply_seals_kept(sh, 5, None, "approx_hnsw")
    assert info["mode"] == "approx_hnsw"
    ref = set(seals_candidates(_shards(ids, x, 2, labeled), 5).tolist())
    got = set(_eligible(sh).tolist())
    assert len(got & ref) >= 0.8 * len(ref)


def test_kept_index_in_a_job_selects_what_plain_seals_selects(tmp_path):
    from alscale.jobspec import JobError, validate_job
    from alscale.pool import pool_table, write_table
    from alscale.runtime.coordinator import run_job

    rng = np.random.default_rng(3)
    ids, x = _data()
    lp = np.log(rng.dirichlet(np.ones(4), N)).astype(np.float32)
    pool = tmp_path / "pool.arrow"
    write_table(pool_table(ids, log_probs_N_K_C=lp[:, None, :], embeddings_N_D=x), str(pool))
    labeled = ids[::40]
    for rnd in range(2):
        lab_file = tmp_path / f"labeled{rnd}.csv"
        lab_file.write_text("row_id\n" + "\n".join(map(str, labeled)) + "\n")
        base = {"pool": {"path": str(pool)}, "labeled": {"path": str(lab_file)},
                "runtime": {"executor": "local", "shards": 2}}
        plain = run_job(validate_job({**base, "strategy": {"name": "entropy", "budget": 20, "seals": 6}}),
                        out_dir=tmp_path / f"plain{rnd}", progress=False)
        kept = run_job(validate_job({**base, "strategy": {"name": "entropy", "budget": 20, "seals": 6,
                                                          "seals_index": str(tmp_path / "idx")}}),
                       out_dir=tmp_path / f"kept{rnd}", progress=False)
        assert kept.selection.indices_B.tolist() == plain.selection.indices_B.tolist()
        info = kept.manifest["candidates"]["kept"]
        assert kept.manifest["candidates"]["rows"] == plain.manifest["candidates"]["rows"]
        assert info["reused"] == (0 if rnd == 0 else len(ids[::40])) and len(info["candidates_sha256"]) == 64
        labeled = np.concatenate([labeled, plain.selection.indices_B])
    with pytest.raises(JobError, match="seals_index must be a directory path and needs strategy.seals"):
        validate_job({**base, "strategy": {"name": "entropy", "budget": 5, "seals_index": "x"}})
    with pytest.raises(JobError, match="strategy.seals_mode must be one of exact"):
        validate_job({**base, "strategy": {"name": "entropy", "budget": 5, "seals": 3, "seals_mode": "hnsw"}})
