"""Shared fixtures: small real pools on disk and one local Ray for the whole session."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Ray >= 2.59 enables token auth for local clusters; the tests start their own Ray.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) shared by every Ray test; executors reuse it."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
