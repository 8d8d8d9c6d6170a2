"""Strategy registry: names, aliases, kinds, requirements, option checking, import rule."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from alscale.errors import AlscaleError
from alscale.strategies import registry, scores
from alscale.strategies.registry import check_options, get_strategy, score_strategy, strategy_names

NAMES = [
    "alfamix",
    "badge",
    "badge_parallel",
    "bald",
    "base_balanced",
    "batchbald",
    "batchbald_prefilter",
    "cluster_margin",
    "confidence_ratio",
    "consensus_kl",
    "egl",
    "entropy",
    "kcenter",
    "kcenter_approx",
    "kmeans_parallel",
    "kmeanspp",
    "learning_loss",
    "least_confidence",
    "margin",
    "mean_std",
    "objective",
    "power",
    "probcover",
    "probcover_approx",
    "random",
    "softmax",
    "softrank",
    "typiclust",
    "variation_ratios",
    "vote_entropy",
]
SCORE_NAMES = [
    "bald",
    "consensus_kl",
    "entropy",
    "least_confidence",
    "margin",
    "mean_std",
    "variation_ratios",
    "vote_entropy",
]

# Every per-row score may be a stochastic strategy's base: scores.py's and ratio.py's.
BASE_NAMES = sorted([*SCORE_NAMES, "confidence_ratio"])


def test_names_are_canonical_and_sorted():
    assert strategy_names() == NAMES
    for name in NAMES:
        assert get_strategy(name).name == name


@pytest.mark.parametrize(
    "alias, name",
    [
        ("lc", "least_confidence"),
        ("least_confident", "least_confidence"),
        ("max_entropy", "entropy"),
        ("varratios", "variation_ratios"),
        ("var_ratios", "variation_ratios"),
        ("qbc", "vote_entropy"),
        ("vote", "vote_entropy"),
        ("kl", "consensus_kl"),
        ("uniform", "random"),
        ("BALD", "bald"),
        ("Max-Entropy", "entropy"),
        ("  Least Confidence ", "least_confidence"),
    ],
)
def test_aliases_and_case(alias, name):
    assert get_strategy(alias) is get_strategy(name)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(AlscaleError) as err:
        get_strategy("foo")
    assert str(err.value) == f"unknown strategy 'foo'; valid: {', '.join(NAMES)}"
    with pytest.raises(AlscaleError, match="unknown strategy 'powerbald'"):
        get_strategy("powerbald")  # PowerBALD is power with base: bald
    with pytest.raises(AlscaleError, match="strategy name must be a string; got 3"):
        get_strategy(3)


def test_kinds_and_requirements():
    for name in SCORE_NAMES:
        info = get_strategy(name)
        assert info.kind == "score" and info.needs_log_probs and info.options == {}
        assert info.score_fn is getattr(scores, name)
    assert {n: get_strategy(n).min_samples for n in SCORE_NAMES} == {
        "bald": 2,
        "consensus_kl": 2,
        "entropy": 1,
        "least_confidence": 1,
        "margin": 1,
        "mean_std": 2,
        "variation_ratios": 2,
        "vote_entropy": 2,
    }
    rnd = get_strategy("random")
    assert (rnd.kind, rnd.score_fn, rnd.needs_log_probs, rnd.min_samples, dict(rnd.options)) == (
        "random",
        None,
        False,
        1,
        {},
    )
    for name in ("power", "softmax", "softrank"):
        info = get_strategy(name)
        assert info.kind == "stochastic" and info.score_fn is None
        assert dict(info.options) == {"beta": 1.0, "base": "entropy"}
        # requirements of the default base (entropy); the caller resolves the real base
        assert (info.min_samples, info.needs_log_probs) == (1, True)
    for name in NAMES:
        summary = get_strategy(name).summary
        assert summary and "\n" not in summary


def test_info_is_immutable():
    info = get_strategy("power")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.options["beta"] = 2.0  # type: ignore[index]
    opts = check_options("power", {})
    opts["beta"] = 5.0  # the returned dict is the caller's own
    assert get_strategy("power").options["beta"] == 1.0


def test_score_fns_run():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 3, 4))
    lp = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
    for name in SCORE_NAMES:
        out = get_strategy(name).score_fn(lp)
        assert out.shape == (7,) and out.dtype == np.float64 and np.isfinite(out).all()


def test_check_options_fills_defaults_and_normalises():
    assert check_options("power", {}) == {"beta": 1.0, "base": "entropy"}
    assert check_options("softmax", None) == {"beta": 1.0, "base": "entropy"}
    got = check_options("SoftRank", {"beta": 2, "base": "VarRatios"})
    assert got == {"beta": 2.0, "base": "variation_ratios"} and isinstance(got["beta"], float)
    assert check_options("power", {"base": "bald", "beta": np.float32(0.5)}) == {"beta": 0.5, "base": "bald"}
    assert check_options("entropy", {}) == {}
    assert check_options("random", None) == {}


def test_check_options_errors():
    with pytest.raises(AlscaleError, match=r"unknown option 'temperature' for strategy power; allowed: base, beta"):
        check_options("power", {"temperature": 1.0})
    with pytest.raises(AlscaleError, match=r"unknown options 'a', 'b' for strategy entropy; allowed: none"):
        check_options("entropy", {"b": 1, "a": 2})
    for beta in (0, -1.5, float("nan"), float("inf"), True, "2", None):
        with pytest.raises(AlscaleError, match=r"option beta of strategy softmax must be a positive number"):
            check_options("softmax", {"beta": beta})
    for base in ("power", "random", "nope", 3):
        with pytest.raises(AlscaleError) as err:
            check_options("power", {"base": base})
        assert f"option base of strategy power must be a score strategy; got {base!r}" in str(err.value)
        assert f"valid: {', '.join(BASE_NAMES)}" in str(err.value)
    with pytest.raises(AlscaleError, match="options of strategy power must be a mapping; got list"):
        check_options("power", [("beta", 1.0)])
    with pytest.raises(AlscaleError, match="unknown strategy 'foo'"):
        check_options("foo", {})


def test_score_strategy_resolves_the_base():
    assert score_strategy("bald") is get_strategy("bald")
    assert score_strategy("power") is get_strategy("entropy")
    assert score_strategy("power", {"base": "bald"}).min_samples == 2
    assert score_strategy("random") is None


def test_import_rule():
    """scores, noise and registry import numpy, the stdlib and alscale.errors only."""
    allowed = {"numpy", "alscale"} | set(sys.stdlib_module_names)
    package = Path(registry.__file__).parent
    for module in ("scores.py", "noise.py", "registry.py"):
        tree = ast.parse((package / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{module} imports {name}"
                if name.startswith("alscale"):
                    assert name in ("alscale.errors", "alscale.strategies"), f"{module} imports {name}"


@pytest.mark.parametrize("name, options, message", [
    ("typiclust", {"knn": 0}, "option knn must be an integer >= 1"),
    ("probcover", {"delta": -1}, "option delta of strategy probcover must be a positive number or 'auto'"),
    ("probcover", {"purity": 1.5}, "option purity of strategy probcover must be in (0, 1]"),
    ("cluster_margin", {"margin_ratio": 0.5}, "margin_ratio of strategy cluster_margin must be a number >= 1"),
    ("egl", {"bias": "yes"}, "option bias of strategy egl must be true or false"),
])
def test_bad_options_are_clear(name, options, message):
    with pytest.raises(AlscaleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        registry.check_options(name, options)
