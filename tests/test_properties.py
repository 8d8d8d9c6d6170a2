"""Property-based checks (hypothesis) of the guarantees users rely on:

- a selection never contains a labelled row or the same row twice, for every strategy, and
  has min(budget, unlabelled) rows;
- the job-file parser and the pool reader raise only their documented errors on any input.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alscale import select
from alscale.errors import AlscaleError, JobError, PoolError
from alscale.jobspec import validate_job
from alscale.pool import open_pool, pool_table, read_shard, write_table
from alscale.strategies import get_strategy, strategy_names
from alscale.types import ShardSpec
from tests.conftest import log_softmax

# Strategies that read a further model output (e.g. a Learning Loss module's predicted loss)
# are tested with a model (tests/scoring/test_learning_loss.py).
NAMES = sorted(n for n in strategy_names() if get_strategy(n).needs.model_output is None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    n=st.integers(2, 40),
    budget=st.integers(1, 50),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_selection_never_holds_a_labelled_or_repeated_row(name, n, budget, seed, data):
    rng = np.random.default_rng(seed)
    log_probs = log_softmax(rng.normal(size=(n, 3, 4)) * 3)
    # Ties on purpose: duplicated rows stress the tie-breaking.
    log_probs[n // 2:] = log_probs[: n - n // 2]
    embeddings = rng.normal(size=(n, 5)).astype(np.float32)
    labeled = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))), dtype=np.int64)
    extra = {}
    needs = get_strategy(name).needs
    if needs.head is True or (needs.head == "optional" and seed % 2):  # the classifier's last linear layer
        extra["head"] = (rng.normal(size=(4, 5)), rng.normal(size=4))
    if needs.labels:  # the labelled rows' labels
        extra["labels"] = (labeled, rng.integers(0, 4, labeled.size))
    sel = select(name, budget=budget, log_probs=log_probs, embeddings=embeddings, labeled=labeled, seed=seed,
                 **extra)
    picked = np.asarray(sel.indices)
    assert picked.size == min(budget, n - labeled.size)
    assert np.unique(picked).size == picked.size
    assert not np.isin(picked, labeled).any()
    assert ((picked >= 0) & (picked < n)).all()


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=12))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                       max_leaves=8)
_KEYS = st.sampled_from(["pool", "labeled", "model", "strategy", "runtime", "seed", "output", "loop", "junk"])
_FIELDS = st.sampled_from(["path", "name", "budget", "options", "round", "embedding", "executor", "shards",
                           "factory", "kwargs", "mc_samples", "device", "checkpoint", "address", "chunk_rows"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, st.one_of(_VALUES, st.dictionaries(_FIELDS, _VALUES, max_size=5)), max_size=8))
def test_job_parser_raises_only_job_errors(raw):
    try:
        job = validate_job(raw)
    except JobError as exc:
        assert "\n" not in str(exc)
        return
    assert job.strategy.budget > 0 and job.runtime.shards >= 1


@pytest.fixture(scope="module")
def pool_bytes(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(1)
    table = pool_table(np.arange(64, dtype=np.int64), features_N_D=rng.normal(size=(64, 4)).astype(np.float32),
                       log_probs_N_C=log_softmax(rng.normal(size=(64, 3))))
    out = {}
    for suffix in (".arrow", ".parquet"):
        write_table(table, str(root / f"p{suffix}"))
        out[suffix] = (root / f"p{suffix}").read_bytes()
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from([".arrow", ".parquet"]), cut=st.integers(0, 10**6),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4))
def test_pool_reader_raises_only_pool_errors(tmp_path_factory, pool_bytes, suffix, cut, flips):
    data = bytearray(pool_bytes[suffix])
    data = data[: cut % (len(data) + 1)] if cut % 3 == 0 else data
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    path = tmp_path_factory.mktemp("case") / f"fuzzed{suffix}"
    path.write_bytes(bytes(data))
    try:
        info = open_pool(str(path))
        columns = ["features", "log_probs"][: 1 + (info.n_classes is not None)] if info.feature_dim is not None else []
        read_shard(ShardSpec(info.path, 0, 0, info.n_rows), columns)
    except (PoolError, AlscaleError) as exc:
        assert "\n" not in str(exc).strip()


_SECTIONS = st.sampled_from(["strategy.options.beta", "runtime.shards", "model.kwargs.width", "loop.trials",
                             "stream.threshold", "seed"])


def _nest(where: str, value: str) -> str:
    """``a.b.c`` + value -> the YAML line ``a: {b: {c: value}}`` (strategy keeps its name and budget)."""
    head, *rest = where.split(".")
    for key in reversed(rest):
        value = f"{{{key}: {value}}}"
    if head == "strategy":
        return f"strategy: {{name: entropy, budget: 5, {value[1:-1]}}}\n"
    return f"{head}: {value}\n"


@settings(max_examples=120, deadline=None)
@given(levels=st.integers(0, 12), width=st.integers(1, 12), where=_SECTIONS, pad_kib=st.sampled_from([0, 4, 1100]),
       as_override=st.booleans())
def test_job_yaml_alias_expansion_and_size_are_bounded(levels, width, where, pad_kib, as_override):
    """Nested anchors of any depth and width, in any section, in the file or an override: the
    job loads when the value's expansion is within MAX_NODES, else one short JobError line
    naming the bound; the file-size cap holds at any size. Nothing expands the value."""
    from alscale.jobspec import apply_overrides
    from alscale.yamlfile import MAX_FILE_BYTES, MAX_NODES, load_yaml

    chain = "[&a0 [" + ", ".join(["x"] * width) + "]" + "".join(
        f", &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)) + "]"
    size, total = 1 + width, 1  # nodes of a0, and of the whole chain (its list + every entry)
    for _ in range(levels + 1):
        total += size
        size = 1 + width * size
    base = "pool: {path: p.arrow}\n" + ("" if where.startswith("strategy") and not as_override
                                         else "strategy: {name: entropy, budget: 5}\n")
    text = base + ("" if as_override else _nest(where, chain)) + "#" * (pad_kib * 1024) + "\n"
    try:
        raw = load_yaml(text, source="job")
        if as_override:
            raw = apply_overrides(raw, [f"{where}={chain}"])
    except JobError as exc:
        msg = str(exc)
        assert "\n" not in msg and len(msg) < 600, msg[:300]
        if len(text) > MAX_FILE_BYTES:
            assert "larger than" in msg
        else:
            assert "expands to more than" in msg and total + 20 > MAX_NODES, (levels, width, msg)
        return
    assert len(text) <= MAX_FILE_BYTES and total <= MAX_NODES, (levels, width)  # a bomb never loads
    try:
        validate_job(raw)
    except JobError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 3000, str(exc)[:300]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["pool", "strategy", "seed", "output", "runtime"]), min_size=1, max_size=8),
       st.booleans())
def test_duplicate_keys_are_always_refused(keys, nested):
    """A mapping that repeats a key is refused naming both lines, at the top or nested."""
    from alscale.yamlfile import load_yaml

    body = "".join(f"{'  ' if nested else ''}{k}: {i}\n" for i, k in enumerate(keys))
    text = ("runtime:\n" + body) if nested else body
    dupe = len(set(keys)) < len(keys)
    try:
        load_yaml(text, source="job")
    except JobError as exc:
        assert dupe and "duplicate key" in str(exc) and "\n" not in str(exc)
        first = keys.index(next(k for i, k in enumerate(keys) if k in keys[:i]))
        assert f"lines {first + 1 + nested} and" in str(exc)
        return
    assert not dupe
