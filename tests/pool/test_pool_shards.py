"""plan_shards: contiguous, balanced, in order."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alscale.errors import PoolError
from alscale.pool import plan_shards
from alscale.types import ShardSpec


@given(n_rows=st.integers(0, 10_000), n_shards=st.integers(1, 300))
def test_shards_concatenate_to_the_pool_in_order(n_rows, n_shards):
    specs = plan_shards("p.arrow", n_rows, n_shards)
    rows = [r for s in specs for r in range(s.start, s.stop)]
    assert rows == list(range(n_rows))
    assert len(specs) == min(n_shards, n_rows)
    assert [s.index for s in specs] == list(range(len(specs)))
    sizes = [s.n_rows for s in specs]
    if sizes:
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
        assert sizes == sorted(sizes, reverse=True)  # earlier shards get the extra rows
    assert all(s.pool == "p.arrow" for s in specs)


def test_known_plan():
    assert plan_shards("p", 10, 3) == [ShardSpec("p", 0, 0, 4), ShardSpec("p", 1, 4, 7),
                                       ShardSpec("p", 2, 7, 10)]
    assert plan_shards("p", 0, 4) == []
    assert plan_shards("p", np.int64(5), np.int32(1)) == [ShardSpec("p", 0, 0, 5)]


def test_more_shards_than_rows_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="alscale.pool.shards"):
        specs = plan_shards("p", 3, 8)
    assert [s.n_rows for s in specs] == [1, 1, 1]
    assert "8 shards requested for 3 rows" in caplog.text


@pytest.mark.parametrize("n_rows, n_shards, match", [
    (10, 0, "n_shards must be an integer >= 1, got 0"),
    (10, -2, "n_shards must be an integer >= 1, got -2"),
    (10, 2.5, "n_shards must be an integer >= 1, got 2.5"),
    (-1, 2, "n_rows must be an integer >= 0, got -1"),
])
def test_bad_arguments(n_rows, n_shards, match):
    with pytest.raises(PoolError, match=match):
        plan_shards("p", n_rows, n_shards)
