"""Reading the outbox as CloudEvents: one run's history, and a tenant's feed after a cursor.

The feed's cursor must not skip a row that commits after a row with a higher `seq` was read
(two transactions take seqs 5 and 6; 6 commits first; a reader that remembers only "after 6"
never sees 5). So the cursor carries the highest seq read *and* the gaps below it: seqs that no
committed row held when the page was read. The next read returns rows after the high mark plus
any gap that has since filled. A gap is given up after GAP_TIMEOUT (a rolled-back transaction
leaves a gap that never fills; no writing transaction of the service lasts that long).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from pipeline_service.db.models import OutboxEvent, Tenant
from schemas.events import LifecycleEvent, OutboxRecord, to_cloud_event

GAP_TIMEOUT = 300.0
MAX_GAPS = 1000


class BadCursor(ValueError):
    """The cursor was not made by this API."""


@dataclass
class FeedCursor:
    high: int = 0
    gaps: dict[int, float] = field(default_factory=dict)
    """seq -> when it was first seen missing (unix time)."""

    def encode(self) -> str:
        raw = json.dumps({"h": self.high, "g": [[s, round(t, 3)] for s, t in self.gaps.items()]})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str | None) -> FeedCursor:
        if not text:
            return cls()
        try:
            raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            gaps = {int(seq): float(at) for seq, at in raw.get("g", [])}
            cursor = cls(high=int(raw["h"]), gaps=gaps)
        except (binascii.Error, ValueError, TypeError, KeyError, AttributeError, OverflowError):
            raise BadCursor("the cursor is not one this API returned") from None
        seqs = [cursor.high, *cursor.gaps]
        # Seqs are 64-bit row ids: anything else cannot have come from here.
        if not all(0 <= seq < 2**63 for seq in seqs) or len(cursor.gaps) > MAX_GAPS:
            raise BadCursor("the cursor is not one this API returned")
        return cursor


def to_event(row: OutboxEvent, tenant: str) -> LifecycleEvent:
    """An outbox row as the CloudEvent the feed serves and the relay publishes."""
    return to_cloud_event(
        OutboxRecord(
            event_id=row.event_id,
            tenant=tenant,
            key=row.key,
            type=row.type,
            actor=row.actor,
            payload=row.payload,
            created_at=row.created_at,
        )
    )


def run_events(session: Session, tenant: Tenant, run_public_id: str) -> list[LifecycleEvent]:
    """A run's events in the order they were recorded."""
    rows = session.scalars(
        select(OutboxEvent)
        .where(OutboxEvent.tenant_id == tenant.id, OutboxEvent.key == run_public_id)
        .order_by(OutboxEvent.seq)
    )
    return [to_event(row, tenant.name) for row in rows]


def read_feed(
    session: Session, tenant: Tenant, cursor: FeedCursor, limit: int
) -> tuple[list[LifecycleEvent], FeedCursor]:
    """The tenant's events after `cursor` (up to `limit`), and the cursor to read on from."""
    rows, cursor = read_outbox(session, cursor, limit, tenant_id=tenant.id)
    return [to_event(row, tenant.name) for row in rows], cursor


def read_outbox(
    session: Session, cursor: FeedCursor, limit: int, *, tenant_id: int | None = None
) -> tuple[list[OutboxEvent], FeedCursor]:
    """Outbox rows after `cursor` (up to `limit`; of one tenant, or of all for the notifier),
    and the cursor to read on from."""
    now = time.time()
    gaps = {seq: at for seq, at in cursor.gaps.items() if now - at < GAP_TIMEOUT}
    query = select(OutboxEvent).where(
        or_(OutboxEvent.seq > cursor.high, OutboxEvent.seq.in_(list(gaps)))
    )
    if tenant_id is not None:
        query = query.where(OutboxEvent.tenant_id == tenant_id)
    rows = session.scalars(query.order_by(OutboxEvent.seq).limit(limit)).all()
    new_high = max([cursor.high, *(row.seq for row in rows)])
    for row in rows:
        gaps.pop(row.seq, None)
    if new_high > cursor.high:
        # Seqs between the old and the new high mark that no committed row holds (of any
        # tenant: seqs are global) may still commit: remember them.
        held = set(
            session.scalars(
                select(OutboxEvent.seq).where(
                    OutboxEvent.seq > cursor.high, OutboxEvent.seq <= new_high
                )
            )
        )
        for seq in range(cursor.high + 1, new_high + 1):
            if seq not in held:
                gaps.setdefault(seq, now)
    if len(gaps) > MAX_GAPS:
        gaps = dict(sorted(gaps.items())[-MAX_GAPS:])
    return list(rows), FeedCursor(new_high, gaps)
