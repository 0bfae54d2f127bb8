"""Fixtures shared by the step and activity unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from steps.engines.duckdb import DuckDBEngine


@pytest.fixture
def engine() -> Iterator[DuckDBEngine]:
    """An in-memory DuckDB engine."""
    eng = DuckDBEngine(None)
    yield eng
    eng.close()


@pytest.fixture
def slow_query() -> str:
    """A query that runs for hours unless interrupted."""
    return (
        "SELECT count(*) FROM range(1000000000) a, range(1000000000) b WHERE a.range + b.range = -1"
    )
