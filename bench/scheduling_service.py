"""An in-process Laminar service for the scheduling benchmarks: a Temporal dev server, a
migrated scratch database, the API app (over an ASGI transport) and one worker that runs
pipeline, scheduler and backfill workflows, with a tenant and an operate key."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recording_systems import database

from pipeline_service.api.app import create_app
from pipeline_service.db.session import session_factory
from pipeline_service.db.tenants import Scope, create_api_key, create_tenant
from pipeline_service.settings import ServiceSettings
from pipeline_service.temporal.dev_server import start_dev_server
from pipeline_service.temporal.worker import build_worker
from steps.engines.duckdb import DuckDBEngine

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass
class BenchService:
    http: httpx.AsyncClient
    sessions: sessionmaker[Session]
    tenant: str


@contextlib.asynccontextmanager
async def bench_service(kind: str) -> AsyncIterator[BenchService]:
    with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as engine:
        root = Path(tmp)
        server, client = await start_dev_server(root / "t.db", root / "t.log", ui=False)
        try:
            sessions = session_factory(engine)
            with sessions() as session:
                tenant = create_tenant(session, "bench", actor="bench")
                _, key = create_api_key(session, tenant, "bench", Scope.OPERATE, actor="bench")
                session.commit()
            settings = ServiceSettings(
                database_url=engine.url.render_as_string(hide_password=False),
                task_queue="bench",
                source_dir=EXAMPLES,
                work_dir=root / "work",
            )
            warehouse = DuckDBEngine(root / "warehouse.duckdb")
            worker = build_worker(
                client,
                task_queue="bench",
                engine=warehouse,
                work_root=settings.work_dir,
                sessions=sessions,
                source_dir=EXAMPLES,
                max_concurrent_activities=64,
            )
            app = create_app(settings, temporal=client)
            async with (
                worker,
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://laminar.bench",
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=60,
                ) as http,
            ):
                yield BenchService(http, sessions, "bench")
            warehouse.close()
        finally:
            server.stop()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
