"""The registry is built from the strategies' specs, and nothing outside a strategy's module
branches on its name."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest

from alscale.strategies import registry
from alscale.strategies.spec import KINDS, STREAM_STATE, StrategySpec, describe

PACKAGE = Path(registry.__file__).resolve().parents[1]


def test_every_strategy_is_a_spec_exported_by_its_module():
    seen = set()
    for spec in registry.all_strategies():
        assert isinstance(spec, StrategySpec)
        assert spec.name not in seen
        seen.add(spec.name)
        assert set(spec.supports.keeps) <= set(STREAM_STATE)
        assert "\n" not in describe(spec)
        if spec.kind == "loop":
            assert callable(spec.select_fn)
        if spec.kind == "score":
            assert callable(spec.score_fn) and spec.supports.stochastic_base
        if spec.supports.quotas:  # a ranking goes through the quota greedy, a loop brings its own
            assert spec.ranks_by_score or spec.quota_select is not None
    assert sorted(seen) == registry.strategy_names()


def _tokens(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the NAME tokens and of the string literals that are exactly one word."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.NAME:
            out.append((tok.start[0], tok.string))
        elif tok.type == tokenize.STRING and tok.string[:1] in "\"'":
            out.append((tok.start[0], tok.string.strip("\"'")))
    return out


# The generic parts of the seam: none of them names a strategy in code (names in prose and in
# longer messages, e.g. "(e.g. entropy)", are fine).
GENERIC = ["jobspec.py", "api.py", "cli.py", "runtime/coordinator.py", "runtime/memory.py", "runtime/worker.py",
           "runtime/local.py", "runtime/ray_executor.py", "runtime/ray_jobs.py", "runtime/shipping.py",
           "strategies/quotas.py", "strategies/seals.py", "strategies/select.py", "strategies/shards.py",
           "strategies/registry.py", "strategies/spec.py", "strategies/groups.py", "strategies/snapshot.py",
           "strategies/progress.py", "workflow/stream.py"]


@pytest.mark.parametrize("module", GENERIC)
def test_generic_modules_do_not_branch_on_strategy_names(module):
    names = set(registry.strategy_names()) | {a for s in registry.all_strategies() for a in s.aliases}
    names -= set(KINDS)  # "random" is also a kind (StrategySpec.kind), which generic code may test
    hits = [(line, text) for line, text in _tokens(PACKAGE / module) if text in names]
    assert not hits, f"{module} names strategies {hits}; read the strategy's spec instead"
