"""synth_pool: planted structure, determinism, independence of chunking."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from alscale.errors import PoolError
from alscale.pool import open_pool, read_shard, synth_pool
from alscale.pool.synth import _BLOCK_ROWS
from alscale.types import ShardSpec

ALL = ("features", "log_probs", "label")


def _read_all(path: str):
    info = open_pool(path)
    cols = [c for c in ALL if c in info.columns]
    return read_shard(ShardSpec(path, 0, 0, info.n_rows), cols)


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f))
               for f in ("row_ids_N", "features_N_D", "log_probs_N_K_C", "labels_N"))


def test_same_seed_same_pool_other_seed_other_pool(tmp_path):
    kw = dict(rows=3000, dim=5, classes=3, log_probs_samples=2)
    a = _read_all(synth_pool(str(tmp_path / "a.arrow"), seed=1, **kw).path)
    b = _read_all(synth_pool(str(tmp_path / "b.arrow"), seed=1, **kw).path)
    c = _read_all(synth_pool(str(tmp_path / "c.arrow"), seed=2, **kw).path)
    assert _same(a, b)
    assert not np.array_equal(a.features_N_D, c.features_N_D)
    np.testing.assert_array_equal(a.row_ids_N, np.arange(3000))


def test_content_is_independent_of_chunk_rows_and_format(tmp_path):
    rows = _BLOCK_ROWS + 3001  # spans two generation blocks
    kw = dict(rows=rows, dim=3, classes=3, seed=5, log_probs_samples=2)
    reference = _read_all(synth_pool(str(tmp_path / "ref.arrow"), **kw).path)
    for chunk_rows in (997, 50_000):
        other = synth_pool(str(tmp_path / f"c{chunk_rows}.arrow"), chunk_rows=chunk_rows, **kw)
        assert _same(reference, _read_all(other.path)), chunk_rows
    as_parquet = synth_pool(str(tmp_path / "p.parquet"), chunk_rows=70_000, **kw)
    assert as_parquet.format == "parquet"
    assert _same(reference, _read_all(as_parquet.path))
    # chunk_rows sets the streaming unit, visible as IPC record batches
    assert ipc.open_file(str(tmp_path / "c50000.arrow")).num_record_batches > \
        ipc.open_file(str(tmp_path / "ref.arrow")).num_record_batches


def test_log_probs_types_and_normalisation(tmp_path):
    flat = synth_pool(str(tmp_path / "k1.arrow"), rows=500, dim=4, classes=5,
                      log_probs_samples=1)
    nested = synth_pool(str(tmp_path / "k3.arrow"), rows=500, dim=4, classes=5,
                        log_probs_samples=3)
    none = synth_pool(str(tmp_path / "k0.arrow"), rows=500, dim=4, classes=5)
    assert (flat.n_samples, flat.n_classes) == (1, 5)
    assert (nested.n_samples, nested.n_classes) == (3, 5)
    assert none.n_samples is None and "log_probs" not in none.columns
    with pa.memory_map(flat.path) as f:
        assert str(ipc.open_file(f).schema.field("log_probs").type) == \
            "fixed_size_list<item: float>[5]"
    lp_N_K_C = _read_all(nested.path).log_probs_N_K_C
    assert lp_N_K_C.shape == (500, 3, 5) and (lp_N_K_C <= 0).all()
    np.testing.assert_allclose(np.exp(lp_N_K_C).sum(-1), 1.0, rtol=1e-5)
    assert np.abs(np.diff(lp_N_K_C, axis=1)).max() > 0  # samples disagree
    # features and labels do not depend on K
    np.testing.assert_array_equal(_read_all(flat.path).features_N_D,
                                  _read_all(none.path).features_N_D)
    np.testing.assert_array_equal(_read_all(nested.path).labels_N, _read_all(none.path).labels_N)


def test_label_noise_rate_and_planted_structure(tmp_path):
    kw = dict(rows=20_000, dim=8, classes=4, seed=3, log_probs_samples=1)
    clean = _read_all(synth_pool(str(tmp_path / "clean.arrow"), label_noise=0.0, **kw).path)
    noisy = _read_all(synth_pool(str(tmp_path / "noisy.arrow"), label_noise=0.2, **kw).path)
    np.testing.assert_array_equal(clean.features_N_D, noisy.features_N_D)
    flipped = np.mean(clean.labels_N != noisy.labels_N)
    assert abs(flipped - 0.2) < 0.015
    assert set(np.unique(clean.labels_N)) == {0, 1, 2, 3}
    counts = np.bincount(clean.labels_N)
    assert counts.min() > 0.2 * 20_000  # balanced classes (two blobs each)
    teacher = clean.log_probs_N_K_C[:, 0].argmax(-1)
    assert np.mean(teacher == clean.labels_N) > 0.75  # the teacher knows the planted classes


@pytest.mark.parametrize("kwargs, match", [
    (dict(rows=0), "rows must be >= 1"),
    (dict(classes=1), "classes must be >= 2"),
    (dict(label_noise=1.5), r"label_noise must be in \[0, 1\]"),
    (dict(log_probs_samples=-1), "log_probs_samples must be >= 0"),
    (dict(chunk_rows=0), "chunk_rows must be >= 1"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    args = dict(rows=10, dim=2, classes=3) | kwargs
    with pytest.raises(PoolError, match=match):
        synth_pool(str(tmp_path / "p.arrow"), **args)


def test_format_must_match_the_suffix(tmp_path):
    with pytest.raises(PoolError, match="does not match the file suffix"):
        synth_pool(str(tmp_path / "p.parquet"), rows=10, dim=2, classes=2, format="ipc")


def _rows(path):
    info = open_pool(str(path))
    return read_shard(ShardSpec(info.path, 0, 0, info.n_rows), ["features", "label"])


def test_test_split_is_other_rows_of_the_same_planted_classes(tmp_path):
    kw = dict(rows=3000, dim=16, classes=3, seed=2, label_noise=0.0, separation=12.0)
    pool, test = _rows(synth_pool(str(tmp_path / "p.arrow"), **kw).path), \
        _rows(synth_pool(str(tmp_path / "t.arrow"), split="test", **kw).path)
    assert not np.array_equal(pool.features_N_D[:10], test.features_N_D[:10])
    np.testing.assert_array_equal(test.row_ids_N, np.arange(3000))
    # same planted classes: the pool's rows classify the test rows (1-nearest neighbour) almost perfectly
    x = test.features_N_D[:500]
    d = (x ** 2).sum(1)[:, None] - 2 * x @ pool.features_N_D.T + (pool.features_N_D ** 2).sum(1)[None]
    assert (pool.labels_N[d.argmin(1)] == test.labels_N[:500]).mean() > 0.95


def test_default_separation_keeps_the_pool_unchanged(tmp_path):
    a = _rows(synth_pool(str(tmp_path / "a.arrow"), rows=500, dim=8, classes=3).path)
    b = _rows(synth_pool(str(tmp_path / "b.arrow"), rows=500, dim=8, classes=3, separation=4.5).path)
    c = _rows(synth_pool(str(tmp_path / "c.arrow"), rows=500, dim=8, classes=3, separation=9.0).path)
    np.testing.assert_array_equal(a.features_N_D, b.features_N_D)
    assert not np.array_equal(a.features_N_D, c.features_N_D)
    with pytest.raises(PoolError, match="separation"):
        synth_pool(str(tmp_path / "d.arrow"), rows=5, dim=2, classes=2, separation=0.0)
    with pytest.raises(PoolError, match="split"):
        synth_pool(str(tmp_path / "d.arrow"), rows=5, dim=2, classes=2, split="val")
