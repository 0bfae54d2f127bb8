"""The FastAPI application: routers, problem bodies, body limit, request metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from pipeline_service.api.limits import BodyLimitMiddleware, InFlightLimitMiddleware
from pipeline_service.api.problems import PROBLEM_RESPONSES, ProblemBody, install_handlers
from pipeline_service.api.routers import (
    backfills,
    definitions,
    event_feed,
    events,
    health,
    pipelines,
    pools,
    quarantine,
    quotas,
    run_actions,
    runs,
    schedules,
    secrets,
    tenants,
)
from pipeline_service.api.services import Services
from pipeline_service.db.session import make_engine, session_factory
from pipeline_service.dispatcher import RunDispatcher
from pipeline_service.metrics import ApiMetrics
from pipeline_service.settings import ServiceSettings


def create_app(
    settings: ServiceSettings, *, temporal: Client | None = None, dispatch: bool = False
) -> FastAPI:
    """The API over `settings.database_url` (migrated beforehand: `laminar db upgrade`).
    `dispatch`: also run the dispatcher that starts runs waiting for a quota slot."""
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    services = Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        metrics=ApiMetrics(sessions),
        temporal=temporal,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = None
        if dispatch:
            dispatcher = RunDispatcher(
                sessions,
                services.temporal_client,
                task_queue=settings.task_queue,
                source_dir=settings.source_dir,
                bundle_cache=settings.bundle_cache,
            )
            task = asyncio.create_task(dispatcher.run(stop))
        yield
        stop.set()
        if task is not None:
            await task
        engine.dispose()

    app = FastAPI(
        title="Laminar",
        summary="Pipelines of SQL, Python, Spark and Flink steps, run durably on Temporal.",
        version="1",
        lifespan=lifespan,
    )
    app.state.services = services
    install_handlers(app)
    for router in (
        tenants.router,
        tenants.keys_router,
        quotas.admin_router,
        quotas.router,
        secrets.router,
        pools.router,
        pools.tenant_router,
        pipelines.router,
        runs.router,
        run_actions.router,
        quarantine.router,
        schedules.router,
        backfills.router,
        definitions.router,
        events.router,
        event_feed.router,
    ):
        app.include_router(router, responses=PROBLEM_RESPONSES)
    app.include_router(health.router)
    _register_problem_schema(app)

    # Exempt: no database, or (the event feed's long poll, up to 30 s) a session per poll
    # opened and closed within one thread hop, so waiting there holds no connection.
    app.add_middleware(
        InFlightLimitMiddleware,
        limit=in_flight_limit(engine),
        exempt=("/health/live", "/metrics", "/v1/events"),
    )
    app.add_middleware(LatencyMiddleware, metrics=services.metrics)
    # Outermost: an oversize body is refused before any other layer reads it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app


def in_flight_limit(engine: Engine) -> int:
    """Half the connection pool (a request holds up to two connections), less two for the
    dispatcher and the health check; see InFlightLimitMiddleware."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return 32
    capacity = pool.size() + max(int(getattr(pool, "_max_overflow", 0)), 0)
    return max(capacity // 2 - 2, 2)


def _register_problem_schema(app: FastAPI) -> None:
    """Put ProblemBody in the OpenAPI components that the error responses refer to."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["ProblemBody"] = ProblemBody.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class LatencyMiddleware:
    """Request latency by method, route template and status (pure ASGI: no per-request task,
    unlike `@app.middleware`)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - began
            )


def app_from_settings() -> FastAPI:
    """Factory for `laminar server --workers N` (each worker process builds its own app)."""
    return create_app(ServiceSettings(), dispatch=True)
