"""Writing events to the outbox, inside the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from pipeline_service.db.models import OutboxEvent
from schemas.events import EventType


def add_event(
    session: Session,
    *,
    tenant_id: int,
    key: str,
    type: EventType,
    actor: str,
    payload: dict[str, Any],
    event_id: str | None = None,
) -> OutboxEvent:
    """Queue one event; it commits (or not) with the state change it describes."""
    row = OutboxEvent(
        event_id=event_id or str(uuid.uuid4()),
        tenant_id=tenant_id,
        key=key,
        type=type.value,
        actor=actor,
        payload=payload,
    )
    session.add(row)
    return row
