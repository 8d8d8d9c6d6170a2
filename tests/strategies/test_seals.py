"""SEALS (seals.py): the candidates are the labelled rows' nearest neighbours, for any strategy,
in a job and the API."""

from __future__ import annotations

import numpy as np
import pytest

from alscale.index.exact import sq_dist_rows
from alscale.strategies import run_strategy
from tests.strategies.pools import make_shards


def seals_reference(ids, emb, labeled, k):
    lab = np.flatnonzero(np.isin(ids, labeled))
    free = np.flatnonzero(~np.isin(ids, labeled))
    out = set()
    for i in lab:
        d = sq_dist_rows(emb[free], emb[i])
        o = np.lexsort((ids[free], d))[:k]
        out.update(ids[free][o].tolist())
    return np.array(sorted(out), dtype=np.int64)


@pytest.mark.parametrize("strategy", ["entropy", "kcenter", "badge"])
def test_seals_restricts_any_strategy_to_the_labelled_rows_neighbours(data, strategy):
    from alscale.strategies.seals import apply_seals, seals_candidates

    ids, emb, lp = data
    labeled = ids[::90][:10]
    ref = seals_reference(ids, emb, labeled, 15)
    sels = []
    for n_shards in (1, 3):
        shards, _ = make_shards(ids, emb, lp, n_shards=n_shards, labeled=labeled)
        np.testing.assert_array_equal(seals_candidates(shards, 15), ref)
        assert apply_seals(shards, 15) == ref.size == shards.n_candidates()
        sels.append(run_strategy(shards, strategy, 20, seed=4))
    np.testing.assert_array_equal(sels[1].indices_B, sels[0].indices_B)
    assert np.isin(sels[0].indices_B, ref).all()
    # The same strategy on a pool holding only the candidates and the labelled rows picks the same
    # rows (labelled rows keep their role, e.g. as k-center centers).
    keep = np.isin(ids, np.concatenate([ref, labeled]))
    shards, _ = make_shards(ids[keep], emb[keep], lp[keep], labeled=labeled)
    np.testing.assert_array_equal(run_strategy(shards, strategy, 20, seed=4).indices_B, sels[0].indices_B)


def test_seals_in_a_job_and_the_api(data, tmp_path):
    import alscale
    from alscale.jobspec import validate_job
    from alscale.pool import pool_table, write_table
    from alscale.runtime.coordinator import run_job

    ids, emb, lp = data
    labeled = ids[::90][:10]
    pool = tmp_path / "pool.arrow"
    write_table(pool_table(ids, log_probs_N_K_C=lp, embeddings_N_D=emb), str(pool))
    lab_file = tmp_path / "labeled.csv"
    lab_file.write_text("row_id\n" + "\n".join(map(str, labeled)) + "\n")
    job = validate_job({"pool": {"path": str(pool)}, "labeled": {"path": str(lab_file)},
                        "strategy": {"name": "entropy", "budget": 20, "seals": 15},
                        "runtime": {"executor": "local", "shards": 2}})
    res = run_job(job, out_dir=tmp_path / "out", progress=False)
    ref = seals_reference(ids, emb, labeled, 15)
    assert res.manifest["candidates"] == {"filter": "seals", "k": 15, "rows": ref.size}
    pos = np.flatnonzero(np.isin(ids, labeled))
    api = alscale.select("entropy", budget=20, log_probs=lp, embeddings=emb, labeled=pos, seals=15)
    assert ids[api.indices].tolist() == res.selection.indices_B.tolist()
