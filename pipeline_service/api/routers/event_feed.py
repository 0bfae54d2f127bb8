"""/v1/runs/{id}/events and /v1/events?after=<cursor>: the outbox as CloudEvents, tenant-scoped,
so events stay readable without Kafka (the embedded shape)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query
from pydantic import BaseModel

from pipeline_service.api.deps import ReaderDep, ServicesDep, SessionDep, tenant_of
from pipeline_service.api.problems import ProblemError, not_found
from pipeline_service.db import runs as repo
from pipeline_service.events.feed import BadCursor, FeedCursor, read_feed, run_events
from schemas.events import LifecycleEvent

router = APIRouter(tags=["events"])


class EventPage(BaseModel):
    events: list[LifecycleEvent]
    next: str
    """Pass as `after` to read on; it never skips an event that commits late."""


@router.get("/v1/runs/{run_id}/events", response_model=list[LifecycleEvent])
def get_run_events(run_id: str, principal: ReaderDep, session: SessionDep) -> list[LifecycleEvent]:
    """The run's events, in the order they were recorded (kept while the run's outbox rows are:
    the relay prunes rows sent to Kafka after its retention, 7 days by default)."""
    tenant = tenant_of(principal)
    if repo.get_run(session, tenant.id, run_id) is None:
        raise not_found(f"run {run_id!r}")
    return run_events(session, tenant, run_id)


@router.get("/v1/events", response_model=EventPage)
async def list_events(
    principal: ReaderDep,
    services: ServicesDep,
    after: Annotated[str | None, Query(max_length=20_000)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    wait: Annotated[float, Query(ge=0, le=30, description="Long-poll up to this many s.")] = 0,
) -> EventPage:
    """The tenant's events after the cursor `after` (from the oldest kept without one)."""
    tenant = tenant_of(principal)
    try:
        cursor = FeedCursor.decode(after)
    except BadCursor as exc:
        raise ProblemError(400, str(exc)) from None

    def read() -> EventPage:
        with services.sessions() as session:
            events, next_cursor = read_feed(session, tenant, cursor, limit)
        return EventPage(events=events, next=next_cursor.encode())

    deadline = time.monotonic() + wait
    while True:
        page = await anyio.to_thread.run_sync(read)
        if page.events or time.monotonic() >= deadline:
            return page
        await asyncio.sleep(0.25)
