"""The labelled ledger is append-only: files are never rewritten, rows are labelled once."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alscale.errors import AlscaleError
from alscale.loop import Ledger


def _snapshot(path):
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}


def test_appends_add_files_and_never_touch_earlier_ones(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    ledger.append(np.array([5, 3]), np.array([1, 0]), 0, "initial:balanced")
    before = _snapshot(tmp_path / "ledger")
    stat = os.stat(tmp_path / "ledger" / "round-00000.parquet")
    ledger.append(np.array([9]), np.array([2]), 1, "entropy")
    after = _snapshot(tmp_path / "ledger")
    assert set(after) == {"round-00000.parquet", "round-00001.parquet"}
    assert after["round-00000.parquet"] == before["round-00000.parquet"]
    assert os.stat(tmp_path / "ledger" / "round-00000.parquet").st_mtime_ns == stat.st_mtime_ns
    reopened = Ledger(tmp_path / "ledger")
    assert reopened.row_ids.tolist() == [5, 3, 9] and reopened.labels.tolist() == [1, 0, 2]
    assert reopened.rounds == [0, 1] and len(reopened) == 3


def test_relabelling_duplicates_and_old_rounds_are_refused_and_write_nothing(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    ledger.append(np.array([1, 2]), np.array([0, 1]), 0, "initial")
    before = _snapshot(tmp_path / "ledger")
    with pytest.raises(AlscaleError, match="row_id 2 is already labelled"):
        ledger.append(np.array([7, 2]), np.array([0, 0]), 1, "s")
    with pytest.raises(AlscaleError, match="appears twice"):
        ledger.append(np.array([7, 7]), np.array([0, 0]), 1, "s")
    with pytest.raises(AlscaleError, match="round 0 appended after round 0"):
        ledger.append(np.array([8]), np.array([0]), 0, "s")
    assert _snapshot(tmp_path / "ledger") == before
    assert Ledger(tmp_path / "ledger").row_ids.tolist() == [1, 2] and len(ledger) == 2


def test_an_existing_round_file_is_never_replaced(tmp_path):
    a = Ledger(tmp_path / "ledger")
    b = Ledger(tmp_path / "ledger")  # a second writer that has not seen a's append
    a.append(np.array([1]), np.array([0]), 0, "a")
    before = _snapshot(tmp_path / "ledger")
    with pytest.raises(FileExistsError):
        b.append(np.array([2]), np.array([1]), 0, "b")
    assert _snapshot(tmp_path / "ledger") == before
    assert not [n for n in os.listdir(tmp_path / "ledger") if n.endswith(".tmp")]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=6), min_size=1, max_size=6))
def test_property_the_ledger_never_holds_a_row_twice(tmp_path_factory, batches):
    path = tmp_path_factory.mktemp("ledger")
    ledger = Ledger(path)
    seen: set[int] = set()
    for rnd, batch in enumerate(batches):
        ids = np.array(batch)
        ok = len(set(batch)) == len(batch) and not seen & set(batch)
        if ok:
            ledger.append(ids, ids % 3, rnd, "p")
            seen |= set(batch)
        else:
            with pytest.raises(AlscaleError):
                ledger.append(ids, ids % 3, rnd, "p")
    reread = Ledger(path).row_ids
    assert sorted(reread.tolist()) == sorted(seen) and np.unique(reread).size == reread.size
