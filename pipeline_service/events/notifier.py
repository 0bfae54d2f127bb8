"""Pipeline-level notifications and SLA deadlines, driven by the lifecycle events.

A pipeline's `notifications: [{on: [...], channel}]` are not sent by the run's workflow: the
notifier follows the outbox (the rows `record_run_events` and the launcher write with every state
change) and sends from there, so there is one event path, and a workflow that replays sends
nothing. One round has three parts:

1. Queue: read the outbox after the notifier's durable cursor (a feed cursor: the high mark and
   the gaps below it, see feed.py), match each event to the rules of *its* pipeline version (the
   version is looked up within the event's tenant), and insert one delivery per (event, rule) —
   unique, so an event read twice is queued once — then save the cursor, all in one transaction.
2. SLA: for every pipeline with an `sla`, find the logical dates whose deadline passed since the
   last check and whose run had not SUCCEEDED by then (also when no run exists at all), and
   write a PIPELINE_SLA_MISSED event to the outbox (its id is derived from the pipeline and the
   logical date: written once), which part 1 then queues like any other event.
3. Send: claim due deliveries (a lease, so another notifier does not take them meanwhile), send
   each through its channel (the `notification` step's webhook, Slack and email senders; secret
   fields written `{{ secrets.name }}` are read from the event's tenant's secrets), and record
   SENT, or the error and the next attempt (exponential backoff), or FAILED.

On PostgreSQL parts 1 and 2 run under transaction-scoped advisory locks, so any number of
workers may run a notifier: one queues at a time, and deliveries are claimed row by row
(`FOR UPDATE SKIP LOCKED`). SQLite (`laminar run`) has one notifier.

Delivery is at least once: a notifier that dies between sending and recording it sends again
when the lease ends, with the same `Idempotency-Key` (webhooks) or `X-Laminar-Idempotency-Key`
(email) header, `notification/<event id>/<rule>`, for the receiver to drop the duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, sessionmaker

from pipeline_service.db.base import utcnow
from pipeline_service.db.models import (
    NotificationCursor,
    NotificationDelivery,
    OutboxEvent,
    Pipeline,
    PipelineVersion,
    Run,
    SlaWatch,
    StepRun,
    Tenant,
)
from pipeline_service.db.outbox import add_event
from pipeline_service.events.feed import FeedCursor, read_outbox, to_event
from pipeline_service.scheduling.fire_times import Cron, Interval
from schemas.connections import (
    EmailChannel,
    ResourceError,
    Resources,
    SlackChannel,
    WebhookChannel,
)
from schemas.events import EventType, LifecycleEvent
from schemas.pipeline import NotificationRule, NotifyOn, PipelineDefinition, Schedule, Sla
from schemas.recording import PipelineStatus, RecordedRunStatus
from steps.base import StepError
from steps.notification import post_json, send_email

log = logging.getLogger(__name__)

# Fixed keys every notifier of one database contends for (distinct from the relay's).
QUEUE_LOCK_KEY = 0x4C414D4E4F5451  # "LAMNOTQ"
SLA_LOCK_KEY = 0x4C414D4E4F5453  # "LAMNOTS"
CURSOR_NAME = "notifier"
SLA_NAMESPACE = uuid.UUID("5b0c1f0e-8a53-4b53-9a57-1a7c9e0d5f12")

MAX_ATTEMPTS = 10
"""Sends per delivery before it is given up (FAILED); with the backoff below, about 40 min."""
FIRST_BACKOFF = timedelta(seconds=2)
MAX_BACKOFF = timedelta(minutes=10)
LEASE = timedelta(minutes=2)
RETENTION = timedelta(days=7)
"""Finished deliveries are kept this long (as the relay keeps sent outbox rows)."""
MAX_SLA_DATES = 100
"""Deadlines checked per pipeline and round (the oldest first); the rest wait for the next."""
MAX_CACHED_RULES = 10_000
"""Pipeline versions whose notification rules a notifier keeps (the oldest go first)."""

PENDING, SENT, FAILED = "PENDING", "SENT", "FAILED"

_ON: dict[EventType, NotifyOn] = {
    EventType.PIPELINE_FAILED: NotifyOn.FAILURE,
    EventType.PIPELINE_SUCCEEDED: NotifyOn.SUCCESS,
    EventType.PIPELINE_STEP_RETRYING: NotifyOn.RETRYING,
    EventType.PIPELINE_STEP_COMPLETED: NotifyOn.QUALITY_WARNING,
    EventType.PIPELINE_SLA_MISSED: NotifyOn.SLA_MISSED,
}
_RULES = TypeAdapter(list[NotificationRule])

SecretsReader = Callable[[str, set[str]], dict[str, str]]
"""(tenant name, secret names) -> values; absent names are missing."""


@dataclass
class RoundResult:
    queued: int = 0
    sla_missed: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0


class Notifier:
    """Queues, checks SLAs and sends for the database behind `sessions`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        resources: Resources,
        *,
        secrets: SecretsReader | None = None,
        batch_size: int = 500,
    ) -> None:
        self.sessions, self.resources, self.secrets = sessions, resources, secrets
        self.batch_size = batch_size
        bind = sessions.kw.get("bind")
        self._is_postgres = bind is not None and bind.dialect.name == "postgresql"
        self._rules: dict[tuple[int, str, int], list[NotificationRule]] = {}
        """Notification rules by (tenant id, pipeline, version): a version never changes and
        pipelines are archived, never deleted, so no event needs its version read twice."""
        self._slas: dict[int, tuple[Sla, Schedule] | None] = {}
        self._last_prune = 0.0

    # -- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cursor (at the outbox's end: events from before the notifier first ran
        are not notified) unless it exists."""
        try:
            with self.sessions() as session, session.begin():
                self._cursor(session)
        except IntegrityError:
            pass  # another worker's notifier created it at the same moment

    def run(self, stop: threading.Event, poll: float = 1.0) -> None:
        """Rounds until `stop` is set; a failing round (database down) is logged and retried."""
        while not stop.is_set():
            try:
                self.round()
            except Exception as exc:
                log.warning("notifier round failed: %s", exc)
            stop.wait(poll)

    def round(self, now: datetime | None = None) -> RoundResult:
        if time.monotonic() - self._last_prune >= 60:
            self._last_prune = time.monotonic()
            self.prune()
        result = RoundResult()
        result.sla_missed = self.check_slas(now)
        result.queued = self.queue()
        sent = self.send_due(now)
        result.sent, result.retrying, result.failed = sent.sent, sent.retrying, sent.failed
        return result

    def prune(self, now: datetime | None = None) -> int:
        """Delete finished deliveries (SENT or FAILED) older than RETENTION."""
        cutoff = (now or datetime.now(UTC)) - RETENTION
        with self.sessions() as session, session.begin():
            result = session.execute(
                delete(NotificationDelivery).where(
                    NotificationDelivery.status != PENDING,
                    NotificationDelivery.created_at < cutoff,
                )
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _locked(self, session: Session, key: int) -> bool:
        if not self._is_postgres:
            return True
        return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}))

    # -- 1. queue ---------------------------------------------------------------------------

    def _cursor(self, session: Session) -> tuple[NotificationCursor, FeedCursor]:
        row = session.get(NotificationCursor, CURSOR_NAME)
        if row is None:
            high = session.scalar(select(OutboxEvent.seq).order_by(OutboxEvent.seq.desc()))
            row = NotificationCursor(name=CURSOR_NAME, cursor=FeedCursor(high or 0).encode())
            session.add(row)
            session.flush()
        return row, FeedCursor.decode(row.cursor)

    def queue(self) -> int:
        """Read the outbox after the cursor and queue the deliveries its events call for."""
        queued = 0
        with self.sessions() as session, session.begin():
            if not self._locked(session, QUEUE_LOCK_KEY):
                return 0  # another notifier is queueing right now
            row, cursor = self._cursor(session)
            rows, cursor = read_outbox(session, cursor, self.batch_size)
            tenants: dict[int, str] = {}
            for event_row in rows:
                on = _ON.get(EventType(event_row.type)) if _known(event_row.type) else None
                if on is None:
                    continue
                if on == NotifyOn.QUALITY_WARNING and not self._warned(session, event_row):
                    continue
                rules = self._rules_of(session, event_row)
                matching = [(i, r) for i, r in enumerate(rules) if on in r.on]
                if not matching:
                    continue
                if event_row.tenant_id not in tenants:
                    tenants[event_row.tenant_id] = session.get_one(Tenant, event_row.tenant_id).name
                event = to_event(event_row, tenants[event_row.tenant_id])
                for index, rule in matching:
                    queued += self._insert_delivery(session, event_row, event, index, rule, on)
            row.cursor, row.updated_at = cursor.encode(), utcnow()
        return queued

    def _insert_delivery(
        self,
        session: Session,
        row: OutboxEvent,
        event: LifecycleEvent,
        index: int,
        rule: NotificationRule,
        on: NotifyOn,
    ) -> int:
        insert = pg_insert if self._is_postgres else sqlite_insert
        statement = (
            insert(NotificationDelivery)
            .values(
                tenant_id=row.tenant_id,
                event_id=row.event_id,
                rule=index,
                on=on.value,
                channel=rule.channel,
                event=event.model_dump(mode="json"),
                status=PENDING,
                attempts=0,
                next_attempt_at=utcnow(),
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["event_id", "rule"])
        )
        return int(session.execute(statement).rowcount or 0)  # type: ignore[attr-defined]

    def _rules_of(self, session: Session, row: OutboxEvent) -> list[NotificationRule]:
        """The notification rules of the event's pipeline version, looked up in the event's
        tenant only."""
        pipeline, version = row.payload.get("pipeline"), row.payload.get("version")
        if not isinstance(pipeline, str) or not isinstance(version, int):
            return []
        key = (row.tenant_id, pipeline, version)
        cached = self._rules.get(key)
        if cached is not None:
            return cached
        definition = session.scalar(
            select(PipelineVersion.definition)
            .join(Pipeline, Pipeline.id == PipelineVersion.pipeline_id)
            .where(
                Pipeline.tenant_id == row.tenant_id,
                Pipeline.name == pipeline,
                PipelineVersion.version == version,
            )
        )
        if definition is None:
            return []
        try:
            rules = _RULES.validate_python(definition.get("notifications") or [])
        except ValidationError:
            log.warning("pipeline %s v%s: unreadable notifications", pipeline, version)
            rules = []
        if len(self._rules) >= MAX_CACHED_RULES:
            del self._rules[next(iter(self._rules))]
        self._rules[key] = rules
        return rules

    @staticmethod
    def _warned(session: Session, row: OutboxEvent) -> bool:
        """A completed quality step with warn-severity failures (its result counts them)."""
        if row.payload.get("step_type") != "quality":
            return False
        outputs = session.scalar(
            select(StepRun.outputs)
            .join(Run, Run.id == StepRun.run_id)
            .where(
                Run.tenant_id == row.tenant_id,
                Run.public_id == row.key,
                StepRun.step_id == row.payload.get("step_id"),
                StepRun.attempt == row.payload.get("attempt"),
            )
        )
        return bool(outputs and int(outputs.get("warnings") or 0) > 0)

    # -- 2. SLA -----------------------------------------------------------------------------

    def check_slas(self, now: datetime | None = None) -> int:
        """Write PIPELINE_SLA_MISSED for every deadline passed since the last check whose
        logical date has no run that SUCCEEDED by the deadline."""
        now = now or datetime.now(UTC)
        missed = 0
        with self.sessions() as session, session.begin():
            if not self._locked(session, SLA_LOCK_KEY):
                return 0
            # Definitions are read once per version (then cached): this runs every round.
            candidates = session.execute(
                select(Pipeline, PipelineVersion, Tenant.name)
                .options(defer(PipelineVersion.definition), defer(PipelineVersion.source_text))
                .join(
                    PipelineVersion,
                    (PipelineVersion.pipeline_id == Pipeline.id)
                    & (PipelineVersion.version == Pipeline.current_version),
                )
                .join(Tenant, Tenant.id == Pipeline.tenant_id)
                .where(Pipeline.status != PipelineStatus.ARCHIVED.value)
            ).all()
            for pipeline, version, tenant in candidates:
                found = self._sla_of(version)
                if found is None:
                    continue
                sla, schedule = found
                watch = session.get(SlaWatch, pipeline.id)
                if watch is None:
                    # Deadlines from when this version (with its sla) was stored on.
                    watch = SlaWatch(pipeline_id=pipeline.id, checked_until=version.created_at)
                    session.add(watch)
                if schedule.paused or pipeline.status == PipelineStatus.PAUSED.value:
                    # Paused: its deadlines are skipped, not reported when it resumes.
                    watch.checked_until = now
                    continue
                missed += self._check_pipeline(
                    session, pipeline, version.version, tenant, sla, schedule, watch, now
                )
        return missed

    def _sla_of(self, version: PipelineVersion) -> tuple[Sla, Schedule] | None:
        if version.id not in self._slas:
            found: tuple[Sla, Schedule] | None = None
            if version.definition.get("sla"):
                try:
                    definition = PipelineDefinition.model_validate(version.definition)
                except ValidationError:
                    definition = None
                if definition is not None and definition.sla and definition.schedule:
                    found = (definition.sla, definition.schedule)
            self._slas[version.id] = found
        return self._slas[version.id]

    def _check_pipeline(
        self,
        session: Session,
        pipeline: Pipeline,
        version: int,
        tenant: str,
        sla: Sla,
        schedule: Schedule,
        watch: SlaWatch,
        now: datetime,
    ) -> int:
        missed = 0
        checked = _utc(watch.checked_until)
        due = sla_deadlines(sla, schedule, checked, now)
        for interval, deadline in due:
            missed += self._check_date(
                session, pipeline, version, tenant, interval.logical_date, deadline
            )
        # A full page leaves the rest for the next round; else everything up to now is done.
        watch.checked_until = due[-1][1] if len(due) >= MAX_SLA_DATES else max(checked, now)
        return missed

    @staticmethod
    def _check_date(
        session: Session,
        pipeline: Pipeline,
        version: int,
        tenant: str,
        logical_date: datetime,
        deadline: datetime,
    ) -> int:
        """1 when the logical date missed its deadline (its event written now), else 0."""
        runs = select(Run.public_id, Run.status).where(
            Run.tenant_id == pipeline.tenant_id,
            Run.pipeline_id == pipeline.id,
            Run.logical_date == logical_date,
        )
        in_time = runs.where(
            Run.status == RecordedRunStatus.SUCCEEDED.value, Run.finished_at <= deadline
        )
        if session.execute(in_time).first() is not None:
            return 0
        event_id = str(uuid.uuid5(SLA_NAMESPACE, f"{pipeline.id}@{logical_date.isoformat()}"))
        if session.scalar(select(OutboxEvent.seq).where(OutboxEvent.event_id == event_id)):
            return 0
        latest = session.execute(runs.order_by(Run.id.desc())).first()
        reason = (
            "no run for this logical date"
            if latest is None
            else (f"run {latest[0]} is {latest[1]}")
        )
        add_event(
            session,
            tenant_id=pipeline.tenant_id,
            key=f"pipeline:{pipeline.id}",
            type=EventType.PIPELINE_SLA_MISSED,
            actor="system",
            payload={
                "tenant": tenant,
                "pipeline": pipeline.name,
                "version": version,
                "logical_date": logical_date.isoformat(),
                "deadline": deadline.isoformat(),
                "status": "MISSED",
                "reason": reason,
                "time": deadline.isoformat(),
            },
            event_id=event_id,
        )
        return 1

    # -- 3. send ----------------------------------------------------------------------------

    def send_due(self, now: datetime | None = None) -> RoundResult:
        """Claim the deliveries due now and send them."""
        now = now or datetime.now(UTC)
        with self.sessions() as session, session.begin():
            query = (
                select(NotificationDelivery)
                .where(
                    NotificationDelivery.status == PENDING,
                    NotificationDelivery.next_attempt_at <= now,
                    (NotificationDelivery.claimed_until.is_(None))
                    | (NotificationDelivery.claimed_until < now),
                )
                .order_by(NotificationDelivery.id)
                .limit(self.batch_size)
            )
            if self._is_postgres:
                query = query.with_for_update(skip_locked=True)
            claimed = list(session.scalars(query))
            for delivery in claimed:
                delivery.claimed_until = now + LEASE
            session.flush()
            ids = {delivery.tenant_id for delivery in claimed}
            # The tenant whose secrets a delivery may read: its row's, not what the event says.
            tenants: dict[int, str] = {
                row.id: row.name
                for row in session.execute(
                    select(Tenant.id, Tenant.name).where(Tenant.id.in_(sorted(ids)))
                )
            }
            session.expunge_all()
        result = RoundResult()
        for delivery in claimed:
            outcome = self._send(delivery, tenants[delivery.tenant_id])
            with self.sessions() as session, session.begin():
                values: dict[str, Any] = {
                    "attempts": delivery.attempts + 1,
                    "claimed_until": None,
                }
                if outcome is None:
                    values.update(status=SENT, sent_at=utcnow(), last_error=None)
                    result.sent += 1
                else:
                    error, retryable = outcome
                    values["last_error"] = error
                    if retryable and delivery.attempts + 1 < MAX_ATTEMPTS:
                        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2**delivery.attempts)
                        values["next_attempt_at"] = utcnow() + delay
                        result.retrying += 1
                    else:
                        values["status"] = FAILED
                        result.failed += 1
                    log.warning(
                        "notification %s/%s to channel %r: %s",
                        delivery.event_id,
                        delivery.rule,
                        delivery.channel,
                        error,
                    )
                session.execute(
                    update(NotificationDelivery)
                    .where(NotificationDelivery.id == delivery.id)
                    .values(**values)
                )
        return result

    def _send(self, delivery: NotificationDelivery, tenant: str) -> tuple[str, bool] | None:
        """Send one delivery: None when sent, else (error, retryable). Errors name the channel
        and never carry its URL or secrets."""
        event = LifecycleEvent.model_validate(delivery.event)
        try:
            channel = self.resources.channel(delivery.channel)
            names = set(channel.tenant_secrets.values())
            if names:
                if self.secrets is None:
                    return (
                        f"channel {delivery.channel!r} names tenant secrets but this worker "
                        "has no secret store (LAMINAR_SECRET_KEY)",
                        False,
                    )
                channel = channel.with_secrets(self.secrets(tenant, names))
        except ResourceError as exc:
            return str(exc), False
        title, message = describe(event, NotifyOn(delivery.on))
        key = f"notification/{delivery.event_id}/{delivery.rule}"
        try:
            if isinstance(channel, EmailChannel):
                send_email(delivery.channel, channel, title, message, key)
            elif isinstance(channel, WebhookChannel):
                body = {
                    "on": delivery.on,
                    "title": title,
                    "message": message,
                    "event": event.model_dump(mode="json"),
                }
                asyncio.run(post_json(delivery.channel, channel, channel.url, body, key, 1))
            else:
                assert isinstance(channel, SlackChannel)
                body = {"text": f"*{title}*\n{message}"}
                url = channel.url.get_secret_value()
                asyncio.run(post_json(delivery.channel, channel, url, body, key, 1))
        except StepError as exc:
            return exc.message, exc.retryable
        return None


def sla_deadlines(
    sla: Sla, schedule: Schedule, after: datetime, until: datetime
) -> list[tuple[Interval, datetime]]:
    """The schedule's intervals whose SLA deadline is in (after, until], oldest first."""
    cron = Cron.of(schedule)
    found: list[tuple[Interval, datetime]] = []
    # Deadlines come at or after the interval's end: start from the intervals ending after
    # `after` minus the longest lead an sla can have (a time of day: up to a day later).
    lead = sla.after if sla.after is not None else timedelta(days=1, hours=2)
    start = after - lead
    first = schedule.start
    end = schedule.end
    fires = cron.fires_after(start)
    previous = cron.previous_fire(next(cron.fires_after(start)))
    for fire in fires:
        interval = Interval(previous, fire)
        previous = fire
        if first is not None and interval.start < first:
            continue
        if end is not None and interval.start >= end:
            break
        if fire > until:
            break
        deadline = sla.due(fire)
        if deadline > until:
            break
        if deadline > after:
            found.append((interval, deadline))
        if len(found) >= MAX_SLA_DATES:
            break
    return found


def describe(event: LifecycleEvent, on: NotifyOn) -> tuple[str, str]:
    """A notification's title and text: fixed wording over the event's fields (no template,
    so nothing in a definition or an error message is evaluated)."""
    data = event.data
    what = {
        NotifyOn.FAILURE: "run failed",
        NotifyOn.SUCCESS: "run succeeded",
        NotifyOn.RETRYING: f"step {data.step_id} failed, retrying",
        NotifyOn.QUALITY_WARNING: f"quality warnings in step {data.step_id}",
        NotifyOn.SLA_MISSED: "SLA missed",
    }[on]
    title = " ".join(f"[{data.tenant}] {data.pipeline}: {what}".split())
    lines = [
        f"pipeline: {data.pipeline} (version {data.version})",
        f"tenant: {data.tenant}",
    ]
    if data.run_id:
        lines.append(f"run: {data.run_id}")
    if data.logical_date:
        lines.append(f"logical date: {data.logical_date.isoformat()}")
    if data.deadline:
        lines.append(f"deadline: {data.deadline.isoformat()}")
    if data.step_id:
        lines.append(f"step: {data.step_id} (attempt {data.attempt})")
    if data.status:
        lines.append(f"status: {data.status}")
    if data.error:
        lines.append(f"error: {data.error}")
    if data.reason:
        lines.append(f"reason: {data.reason}")
    return title, "\n".join(lines)


def _known(type: str) -> bool:
    return type in EventType.__members__


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def start_notifier(
    sessions: sessionmaker[Session],
    *,
    secret_key: str | None,
    poll: float,
    resources: Resources | None = None,
) -> tuple[Notifier, threading.Event, threading.Thread]:
    """A notifier on a thread (its database sessions and senders block), channels from the
    worker's settings and tenant secrets from the database when `secret_key` is set."""
    from pipeline_service.secrets.crypto import SecretBox
    from pipeline_service.secrets.store import resolve_secrets
    from schemas.connections import load_resources

    reader: SecretsReader | None = None
    if secret_key is not None:
        box = SecretBox(secret_key)

        def read(tenant: str, names: set[str]) -> dict[str, str]:
            with sessions() as session:
                return resolve_secrets(session, box, tenant, names)

        reader = read
    notifier = Notifier(sessions, resources or load_resources(), secrets=reader)
    notifier.start()
    stop = threading.Event()
    thread = threading.Thread(target=notifier.run, args=(stop, poll), name="notifier", daemon=True)
    thread.start()
    return notifier, stop, thread
