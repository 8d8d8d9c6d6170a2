"""Ratio of confidence (alscale/strategies/ratio.py): known values, ranking, and the conformance check."""

from __future__ import annotations

import numpy as np
import pytest

import alscale
from alscale.errors import AlscaleError
from alscale.strategies import get_strategy
from alscale.strategies.ratio import confidence_ratio
from alscale.testing import check_strategy


def test_known_values_and_its_relation_to_margin():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.05, 0.85], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]])
    with np.errstate(divide="ignore"):  # log(0) = -inf: probability exactly 0 is allowed
        lp = np.log(p)[:, None, :]
    np.testing.assert_allclose(confidence_ratio(lp), [0.6, 0.1 / 0.85, 1.0, 0.0], rtol=1e-12)
    # K samples: the ratio of the mean distribution
    lp2 = np.log(np.array([[[0.7, 0.3], [0.3, 0.7]]]))
    np.testing.assert_allclose(confidence_ratio(lp2), [1.0], rtol=1e-12)


def test_registered_by_its_module_with_what_it_supports():
    spec = get_strategy("ratio")
    assert spec.name == "confidence_ratio" and spec.kind == "score" and spec.score_fn is confidence_ratio
    assert spec.supports.quotas and spec.supports.stochastic_base
    assert alscale.strategies.check_options("power", {"base": "ratio_of_confidence"})["base"] == "confidence_ratio"


def test_selects_the_rows_of_highest_ratio_and_passes_the_checks():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 1, 5)) * 3
    lp = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
    sel = alscale.select("confidence_ratio", budget=10, log_probs=lp, labeled=[0, 1])
    ratio = confidence_ratio(lp)
    ratio[[0, 1]] = -1
    np.testing.assert_array_equal(sel.indices, np.lexsort((np.arange(300), -ratio))[:10])
    check_strategy("confidence_ratio")
    check_strategy("power", options={"base": "confidence_ratio", "beta": 2.0})
    with pytest.raises(AlscaleError, match="at least 2 classes"):
        confidence_ratio(np.zeros((3, 1, 1)))
