"""Canonical float64 distances (bit-identical for any batching) and exact sharded sums."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from alscale.index import canonical_min_sq_dist
from alscale.index.exact import (
    combine_exact_sums,
    exact_column_sums,
    exact_grid_sums,
    grid_exponents,
    sq_dist_rows,
    sq_dist_to_point,
)


@pytest.mark.parametrize("d", [1, 7, 8, 9, 128, 129, 300])
def test_canonical_distance_is_bit_identical_for_any_batching(d):
    rng = np.random.default_rng(d)
    x = (rng.standard_normal((257, d)) * rng.uniform(0.1, 10, d)).astype(np.float32)
    c = rng.standard_normal(d).astype(np.float32)
    full = sq_dist_rows(x, c)
    assert full.dtype == np.float64
    for a, b in [(0, 1), (5, 6), (3, 200), (100, 257)]:
        assert np.array_equal(sq_dist_rows(x[a:b], c), full[a:b])
        assert np.array_equal(sq_dist_rows(x[a:b], np.tile(c, (b - a, 1))), full[a:b])
    assert np.array_equal(sq_dist_to_point(x, c), full)
    # Row by row, and a non-contiguous view of the same values.
    assert np.array_equal([sq_dist_rows(x[i : i + 1], c)[0] for i in range(257)], full)
    xf = np.asfortranarray(x)
    assert np.array_equal(sq_dist_rows(xf, c), full)


def test_canonical_min_equals_the_brute_force_minimum():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 12)).astype(np.float32)
    c = rng.standard_normal((900, 12)).astype(np.float32)
    c[5] = c[7] = x[3]  # exact zeros, duplicated centers
    c[8] = x[4] + np.float32(1e-6)  # a near tie
    brute = np.stack([sq_dist_rows(x, ci) for ci in c], axis=1).min(1)
    got = canonical_min_sq_dist(x, c)
    assert np.array_equal(got, brute)
    assert got[3] == 0.0
    assert np.array_equal(canonical_min_sq_dist(x[:0], c), np.empty(0))
    assert np.all(canonical_min_sq_dist(x[:2], c[:0]) == np.inf)


def _exact_column_sums(x: np.ndarray) -> list[float]:
    return [float(sum(Fraction(float(v)) for v in x[:, d])) for d in range(x.shape[1])]


@pytest.mark.parametrize("cuts", [[0, 400], [0, 1, 399, 400], [0, 133, 134, 250, 400], [0, 0, 200, 400]])
def test_column_sums_are_exact_and_shard_invariant(cuts):
    rng = np.random.default_rng(5)
    scale = np.array([1.0, 1e-3, 1e6, 1e-20, 0.0, 3e30])
    x = (rng.standard_normal((400, 6)) * scale).astype(np.float32)
    x[5, 0], x[7, 1], x[9, 0] = 1e-30, -3.0, 2.0**-140  # tiny, large and subnormal values
    x[300:, 2] *= 1e-9  # shards with very different magnitudes choose different grids
    parts = [exact_column_sums(x[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    assert combine_exact_sums(parts).tolist() == _exact_column_sums(x)


def test_column_sums_cancel_exactly():
    x = np.array([[1e8], [1.0], [-1e8], [2.0**-20]], dtype=np.float32)
    got = combine_exact_sums([exact_column_sums(x[:2]), exact_column_sums(x[2:])])
    assert got.tolist() == [1.0 + 2.0**-20]


def test_grid_levels_reconstruct_the_sum():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((1000, 3)) * [1, 1e-5, 1e5]).astype(np.float32)
    exps = grid_exponents(np.abs(x).max(0), 1000)
    levels = exact_grid_sums(x, exps, 1000)
    _, step = 0, 52 - 10
    total = [sum(Fraction(int(lv[d])) * Fraction(2) ** int(exps[d] - i * step) for i, lv in enumerate(levels))
             for d in range(3)]
    assert [float(t) for t in total] == _exact_column_sums(x)
