"""The real API app over a real database (SQLite and PostgreSQL, every test on both), a real
Temporal dev server, and a real worker that records run state: all started once per session.
Tests isolate by tenant: each makes its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client

from pipeline_service.api.app import create_app
from pipeline_service.db.session import session_factory
from pipeline_service.dispatcher import RunDispatcher
from pipeline_service.settings import ServiceSettings
from pipeline_service.temporal.worker import build_worker
from steps.engines.duckdb import DuckDBEngine

ADMIN_KEY = "test-admin-" + uuid.uuid4().hex
SECRET_KEY = "test-secret-key-" + uuid.uuid4().hex
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Service:
    kind: str
    settings: ServiceSettings
    sessions: sessionmaker[Session]
    http: httpx.AsyncClient
    """No credentials: pass headers, or use `tenant()` for a client with a key."""
    warehouse: DuckDBEngine
    app: FastAPI

    async def tenant(self, scope: str = "operate") -> Tenant:
        name = f"t-{uuid.uuid4().hex[:10]}"
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        response = await self.http.post("/v1/tenants", json={"name": name}, headers=admin)
        assert response.status_code == 201, response.text
        response = await self.http.post(
            f"/v1/tenants/{name}/keys", json={"name": "ci", "scope": scope}, headers=admin
        )
        assert response.status_code == 201, response.text
        key = response.json()["key"]
        http = httpx.AsyncClient(
            transport=self.http._transport,
            base_url="http://laminar.test",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        return Tenant(name, key, http)


@dataclass
class Tenant:
    name: str
    key: str
    http: httpx.AsyncClient

    async def apply(self, definition: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post("/v1/pipelines", json={"definition": definition})
        assert response.status_code == 201, response.text
        return dict(response.json())


@pytest.fixture(scope="session")
async def service(
    db_engine: Engine, client: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    work = tmp_path_factory.mktemp("service")
    queue = f"service-{uuid.uuid4()}"
    settings = ServiceSettings(
        database_url=db_engine.url.render_as_string(hide_password=False),
        admin_api_key=SecretStr(ADMIN_KEY),
        secret_key=SecretStr(SECRET_KEY),
        task_queue=queue,
        source_dir=EXAMPLES,
        work_dir=work / "work",
    )
    sessions = session_factory(db_engine)
    app = create_app(settings, temporal=client)
    engine = DuckDBEngine(work / "warehouse.duckdb")
    worker = build_worker(
        client,
        task_queue=queue,
        engine=engine,
        work_root=settings.work_dir,
        sessions=sessions,
        secret_key=SECRET_KEY,
    )
    transport = httpx.ASGITransport(app=app)
    # The ASGI transport runs no lifespan: the dispatcher of waiting runs runs here.
    dispatcher = RunDispatcher(
        sessions,
        app.state.services.temporal_client,
        task_queue=queue,
        source_dir=EXAMPLES,
    )
    stop = asyncio.Event()
    async with (
        worker,
        httpx.AsyncClient(transport=transport, base_url="http://laminar.test", timeout=60) as http,
    ):
        dispatching = asyncio.create_task(dispatcher.run(stop))
        yield Service(db_engine.dialect.name, settings, sessions, http, engine, app)
        stop.set()
        await dispatching
    engine.close()
