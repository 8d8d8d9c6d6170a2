"""Fixtures for the pool tests: write small pools in either format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from pool_fixtures import SUFFIX

from alscale.pool import write_table


@pytest.fixture
def write_pool(tmp_path: Path) -> Callable[..., str]:
    """``write_pool(table, fmt, name=..., rows_per_batch=...)`` -> path of the written pool."""

    def write(table: pa.Table, fmt: str = "ipc", name: str = "pool",
              rows_per_batch: int = 131072) -> str:
        path = str(tmp_path / f"{name}{SUFFIX[fmt]}")
        write_table(table, path, rows_per_batch=rows_per_batch)
        return path

    return write


@pytest.fixture(params=["ipc", "parquet"])
def fmt(request: pytest.FixtureRequest) -> str:
    return request.param
