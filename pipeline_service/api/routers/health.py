"""/health/live, /health/ready (database and Temporal reachable) and /metrics."""

from __future__ import annotations

import asyncio

import anyio.to_thread
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from pipeline_service.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health/live")
def live() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(services: ServicesDep, response: Response) -> dict[str, str]:
    """Ready to serve: the database answers and Temporal is reachable (503 otherwise)."""
    checks: dict[str, str] = {}

    def ping_database() -> None:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await anyio.to_thread.run_sync(ping_database)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        client = await asyncio.wait_for(services.temporal_client(), timeout=3)
        await asyncio.wait_for(client.service_client.check_health(), timeout=3)
        checks["temporal"] = "ok"
    except Exception as exc:
        checks["temporal"] = f"unreachable: {type(exc).__name__}"
    ok = all(value == "ok" for value in checks.values())
    response.status_code = 200 if ok else 503
    return {"status": "ok" if ok else "unavailable", **checks}


@router.get("/metrics", include_in_schema=False)
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
