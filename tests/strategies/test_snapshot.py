"""``ShardState.snapshot()`` / ``restore()``: a restarted worker's exact state without replaying
its calls. Every strategy, its shard states snapshotted and rebuilt on fresh copies of the
loaded arrays after *every* call, selects exactly what the undisturbed run selects."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from alscale.strategies import FanoutShards, run_strategy, strategy_names
from alscale.strategies.shards import InProcessFanout, ShardState
from alscale.strategies.snapshot import SnapshotError
from tests.conftest import log_softmax

NAMES = sorted(n for n in strategy_names() if n != "learning_loss")


def _fresh_copy(state: ShardState, readonly: bool) -> ShardState:
    """A new state over copies of ``state``'s loaded arrays (what a restarted worker loads)."""

    def cp(a):
        if a is None:
            return None
        b = a.copy()
        b.flags.writeable = not readonly
        return b

    return ShardState(cp(state.row_ids_N), cp(state.log_probs_N_K_C), cp(state.embeddings_N_D),
                      {k: cp(v) for k, v in state.base_scores.items()},
                      {k: cp(v) for k, v in state.model_outputs.items()})


class RestartingFanout:
    """An in-process fan-out whose workers all die after every call and come back from a
    snapshot (sent through pickle, as through Ray) on fresh copies of their loaded arrays."""

    def __init__(self, states: list[ShardState], readonly: bool) -> None:
        self.workers = states
        self.readonly = readonly
        self.restores = 0

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    def map(self, method, args_per_worker):
        out = [getattr(w, method)(*a) for w, a in zip(self.workers, args_per_worker, strict=True)]
        fresh = []
        for w in self.workers:
            snap = pickle.loads(pickle.dumps(w.snapshot(), protocol=5))
            new = _fresh_copy(w, self.readonly)
            new.restore(snap)
            fresh.append(new)
        self.workers = fresh
        self.restores += 1
        return out


def _states(n: int, seed: int, readonly: bool = False) -> list[ShardState]:
    rng = np.random.default_rng(seed)
    lp = log_softmax(rng.normal(size=(n, 3, 4)) * 3)
    emb = rng.normal(size=(n, 5)).astype(np.float32)
    cut = n // 3
    states = []
    for lo, hi in ((0, cut), (cut, n)):
        parts = [np.arange(lo, hi, dtype=np.int64), lp[lo:hi].copy(), emb[lo:hi].copy()]
        for p in parts:
            p.flags.writeable = not readonly
        states.append(ShardState(*parts))
    return states


@pytest.mark.parametrize("name", NAMES)
def test_every_strategy_survives_a_restart_after_every_call(name):
    n, budget, labeled = 60, 9, np.array([1, 7, 30, 44], dtype=np.int64)
    opts = {}
    if name == "alfamix":
        rng = np.random.default_rng(3)
        opts = {"head": (rng.normal(size=(4, 5)), rng.normal(size=4)), "labels": (labeled, np.array([0, 1, 2, 3]))}
    plain = FanoutShards(InProcessFanout(_states(n, 0)))
    plain.exclude(labeled)
    expected = run_strategy(plain, name, budget, options=opts, seed=11)
    fanout = RestartingFanout(_states(n, 0, readonly=name in ("kcenter", "batchbald")), readonly=False)
    shards = FanoutShards(fanout)
    shards.exclude(labeled)
    got = run_strategy(shards, name, budget, options=opts, seed=11)
    assert fanout.restores >= 2
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.scores, expected.scores)


@pytest.mark.parametrize("name", ["entropy", "kcenter", "badge"])
def test_class_quotas_survive_a_restart_after_every_call(name):
    """The quota state (groups, the eligibility before quotas) outlives the candidates' changes
    and is in the snapshot: a restart after every call picks the same rows and class counts."""
    from alscale.strategies.quotas import select_with_quotas

    labeled, quotas = np.array([1, 7, 30, 44], dtype=np.int64), {"min": 2, "max": 4}
    plain = FanoutShards(InProcessFanout(_states(60, 0)))
    plain.exclude(labeled)
    expected = select_with_quotas(plain, name, 9, quotas, seed=11)
    fanout = RestartingFanout(_states(60, 0), readonly=False)
    shards = FanoutShards(fanout)
    shards.exclude(labeled)
    got = select_with_quotas(shards, name, 9, quotas, seed=11)
    assert fanout.restores >= 3
    np.testing.assert_array_equal(got.selection.indices, expected.selection.indices)
    np.testing.assert_array_equal(got.selection.scores, expected.selection.scores)
    assert got.counts == expected.counts and min(got.counts) >= 2


def test_views_tensors_identity_and_loaded_views_are_kept():
    rng = np.random.default_rng(0)
    state = ShardState(np.arange(10, dtype=np.int64), None, rng.normal(size=(10, 3)).astype(np.float32))
    a = np.arange(12, dtype=np.float64)[1:]  # an offset view: alignment and base are kept
    t_src = np.ones(6, dtype=np.float32)
    state.strategy_state["x"] = {"a": a, "v": a[2:7:2], "same": a, "t": torch.from_numpy(t_src), "t_src": t_src,
                          "emb_rows": state.embeddings_N_D[3:6], "ro": np.zeros(3)}
    state.strategy_state["x"]["ro"].flags.writeable = False
    snap = pickle.loads(pickle.dumps(state.snapshot()))
    # Only the state's own arrays are copied; the view of the embeddings is not.
    assert snap.nbytes < 11 * 8 + 6 * 4 + 3 * 8 + 4096
    fresh = ShardState(state.row_ids_N.copy(), None, state.embeddings_N_D.copy())
    fresh.restore(snap)
    x = fresh.strategy_state["x"]
    assert x["same"] is x["a"]
    np.testing.assert_array_equal(x["a"], a)
    x["a"][4] = -1.0  # writes through one view are seen through the other, as before
    assert x["v"][1] == -1.0
    x["t_src"][2] = 5.0
    assert float(x["t"][2]) == 5.0
    assert np.shares_memory(x["emb_rows"], fresh.embeddings_N_D)
    np.testing.assert_array_equal(x["emb_rows"], state.embeddings_N_D[3:6])
    assert not x["ro"].flags.writeable and x["a"].flags.writeable
    assert x["a"].__array_interface__["data"][0] % 64 == a.__array_interface__["data"][0] % 64
    # The original is untouched.
    assert a[4] == 5.0


def test_an_unpicklable_state_is_refused_clearly():
    import threading

    state = ShardState(np.arange(3, dtype=np.int64))
    state.strategy_state["lock"] = threading.Lock()
    with pytest.raises(SnapshotError, match="cannot snapshot the shard state"):
        state.snapshot()
