"""Fixtures of the strategy tests: ``data``, the small clustered pool of :mod:`tests.strategies.pools`
(a test module may define its own ``data``)."""

from __future__ import annotations

import pytest

from tests.strategies.pools import coldstart_data


@pytest.fixture(scope="module")
def data():
    return coldstart_data()
