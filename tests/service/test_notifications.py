"""Pipeline-level notifications and SLA deadlines, end to end: runs on the real dev server and
worker record their events in the real database (SQLite and PostgreSQL); the notifier follows
the outbox and sends to real local receivers (an HTTP server that verifies the HMAC signature,
an aiosmtpd SMTP server)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.parser import BytesParser
from email.policy import default
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from pipeline_service.db.models import NotificationDelivery, OutboxEvent, Pipeline
from pipeline_service.db.pipelines import create_pipeline
from pipeline_service.db.tenants import get_tenant
from pipeline_service.events.notifier import Notifier, start_notifier
from pipeline_service.secrets.crypto import SecretBox
from pipeline_service.secrets.store import resolve_secrets
from schemas.connections import Resources
from tests.receivers import Receiver, verify
from tests.service.conftest import SECRET_KEY, Service, Tenant
from tests.service.test_runs import FLAKY, wait_finished
from tests.unit.test_notification import free_port

HOOK_SECRET = "hook-secret-" + uuid.uuid4().hex


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(BytesParser(policy=default).parsebytes(envelope.content))
        return "250 OK"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def notifier_for(service: Service, channels: dict[str, Any]) -> Notifier:
    """A notifier over the service's database, reading tenant secrets as a worker does."""
    box = SecretBox(SECRET_KEY)

    def read(tenant: str, names: set[str]) -> dict[str, str]:
        with service.sessions() as session:
            return resolve_secrets(session, box, tenant, names)

    notifier = Notifier(service.sessions, Resources(channels=channels), secrets=read)
    notifier.start()
    return notifier


def hook(url: str) -> dict[str, Any]:
    # The signing secret is the tenant's, from the secret store.
    return {"type": "webhook", "url": url, "secret": "{{ secrets.hook_secret }}"}


async def rounds(notifier: Notifier, count: int = 2) -> None:
    for _ in range(count):
        await asyncio.to_thread(notifier.round)


def bodies(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(body) for _, body in receiver.requests]


def failing(name: str, notifications: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [{"id": "broken", "type": "sql", "sql": "SELECT * FROM no_such_table"}],
        "notifications": notifications,
    }


async def run_to_end(tenant: Tenant, pipeline: str) -> dict[str, Any]:
    response = await tenant.http.post(f"/v1/pipelines/{pipeline}/runs", json={})
    assert response.status_code == 201, response.text
    return await wait_finished(tenant, response.json()["id"])


async def test_a_failed_run_sends_one_signed_webhook_and_a_restart_sends_no_more(
    service: Service, receiver: Receiver
) -> None:
    tenant = await service.tenant("admin")
    put = await tenant.http.put("/v1/secrets/hook_secret", json={"value": HOOK_SECRET})
    assert put.status_code in (200, 201), put.text
    await tenant.apply(failing("nightly", [{"on": ["failure"], "channel": "alerts"}]))
    notifier = notifier_for(service, {"alerts": hook(receiver.url)})
    run = await run_to_end(tenant, "nightly")
    assert run["status"] == "FAILED"
    await rounds(notifier)
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    assert verify(headers, body, HOOK_SECRET)
    assert headers["idempotency-key"].startswith("notification/")
    sent = json.loads(body)
    assert sent["on"] == "failure"
    assert sent["event"]["type"] == "PIPELINE_FAILED"
    assert sent["event"]["data"]["run_id"] == run["id"]
    assert sent["event"]["data"]["tenant"] == tenant.name
    assert "no_such_table" in sent["message"]
    assert HOOK_SECRET not in body.decode()
    # A restarted worker (a new notifier, the same database) sends nothing again.
    await rounds(notifier_for(service, {"alerts": hook(receiver.url)}))
    assert len(receiver.requests) == 1
    with service.sessions() as session:
        rows = session.scalars(
            select(NotificationDelivery).where(NotificationDelivery.event_id == sent["event"]["id"])
        ).all()
    assert [(row.status, row.attempts, row.on) for row in rows] == [("SENT", 1, "failure")]
    # Finished deliveries are pruned after a week, like sent outbox rows.
    await asyncio.to_thread(notifier.prune, datetime.now(UTC) + timedelta(days=6))
    with service.sessions() as session:
        assert session.get(NotificationDelivery, rows[0].id) is not None
    await asyncio.to_thread(notifier.prune, datetime.now(UTC) + timedelta(days=8))
    with service.sessions() as session:
        assert session.get(NotificationDelivery, rows[0].id) is None


async def test_success_sends_an_email_and_retrying_steps_notify_each_retry(
    service: Service, receiver: Receiver, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    tenant = await service.tenant("admin")
    await tenant.http.put("/v1/secrets/hook_secret", json={"value": HOOK_SECRET})
    await tenant.apply(
        {
            **FLAKY,
            "notifications": [
                {"on": ["success"], "channel": "mail"},
                {"on": ["retrying", "failure"], "channel": "alerts"},
            ],
        }
    )
    mail = {
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "sender": "laminar@example.com",
        "to": ["data-team@example.com"],
        "starttls": False,  # aiosmtpd here has no certificate
    }
    notifier = notifier_for(service, {"mail": mail, "alerts": hook(receiver.url)})
    run = await run_to_end(tenant, "flaky")
    assert run["status"] == "SUCCEEDED"
    await rounds(notifier)
    assert len(inbox.messages) == 1
    message = inbox.messages[0]
    assert message["To"] == "data-team@example.com"
    assert message["Subject"] == f"[{tenant.name}] flaky: run succeeded"
    assert f"run: {run['id']}" in message.get_content()
    assert message["X-Laminar-Idempotency-Key"].startswith("notification/")
    # flaky_extract fails twice before it succeeds: two retries (one per RETRYING event the
    # run recorded, in order), no failure.
    with service.sessions() as session:
        retrying = session.scalars(
            select(OutboxEvent.event_id)
            .where(OutboxEvent.key == run["id"], OutboxEvent.type == "PIPELINE_STEP_RETRYING")
            .order_by(OutboxEvent.seq)
        ).all()
    sent = bodies(receiver)
    assert len(retrying) == 2
    assert [(b["on"], b["event"]["id"]) for b in sent] == [("retrying", i) for i in retrying]
    assert sent[0]["title"] == f"[{tenant.name}] flaky: step extract failed, retrying"
    assert all(verify(h, b, HOOK_SECRET) for h, b in receiver.requests)


async def test_a_quality_warning_notifies_and_a_clean_check_does_not(
    service: Service, receiver: Receiver
) -> None:
    tenant = await service.tenant("admin")
    await tenant.http.put("/v1/secrets/hook_secret", json={"value": HOOK_SECRET})
    table = f"q_{uuid.uuid4().hex[:8]}"

    def checked(name: str, severity_column: str) -> dict[str, Any]:
        return {
            "name": name,
            "steps": [
                {
                    "id": "load",
                    "type": "sql",
                    "sql": f"CREATE OR REPLACE TABLE {table} AS "
                    "SELECT * FROM (VALUES (1, 'a'), (2, NULL)) t(id, label)",
                },
                {
                    "id": "check",
                    "type": "quality",
                    "depends_on": ["load"],
                    "table": table,
                    "checks": [{"type": "not_null", "column": severity_column, "severity": "warn"}],
                },
            ],
            "notifications": [{"on": ["quality_warning"], "channel": "alerts"}],
        }

    await tenant.apply(checked("warned", "label"))
    await tenant.apply(checked("clean", "id"))
    notifier = notifier_for(service, {"alerts": hook(receiver.url)})
    warned = await run_to_end(tenant, "warned")
    clean = await run_to_end(tenant, "clean")
    assert (warned["status"], clean["status"]) == ("SUCCEEDED", "SUCCEEDED")
    await rounds(notifier)
    sent = bodies(receiver)
    assert [(b["on"], b["event"]["data"]["run_id"]) for b in sent] == [
        ("quality_warning", warned["id"])
    ]
    assert sent[0]["title"] == f"[{tenant.name}] warned: quality warnings in step check"


async def test_another_tenants_events_never_use_this_tenants_rules(
    service: Service, receiver: Receiver
) -> None:
    quiet, loud = await service.tenant("admin"), await service.tenant("admin")
    await loud.http.put("/v1/secrets/hook_secret", json={"value": HOOK_SECRET})
    # Same pipeline name in both tenants; only `loud`'s version has a rule.
    await quiet.apply(failing("shared-name", []))
    await loud.apply(failing("shared-name", [{"on": ["failure"], "channel": "alerts"}]))
    notifier = notifier_for(service, {"alerts": hook(receiver.url)})
    quiet_run = await run_to_end(quiet, "shared-name")
    assert quiet_run["status"] == "FAILED"
    await rounds(notifier)
    assert receiver.requests == []
    loud_run = await run_to_end(loud, "shared-name")
    await rounds(notifier)
    assert [b["event"]["data"]["run_id"] for b in bodies(receiver)] == [loud_run["id"]]


async def test_a_refused_send_retries_with_backoff_and_the_same_idempotency_key(
    service: Service, receiver: Receiver
) -> None:
    tenant = await service.tenant("admin")
    await tenant.http.put("/v1/secrets/hook_secret", json={"value": HOOK_SECRET})
    await tenant.apply(failing("flappy", [{"on": ["failure"], "channel": "alerts"}]))
    notifier = notifier_for(service, {"alerts": hook(receiver.url)})
    receiver.statuses = [503]
    await run_to_end(tenant, "flappy")
    await rounds(notifier)
    assert len(receiver.requests) == 1  # the retry waits for its backoff
    with service.sessions() as session:
        row = session.scalars(
            select(NotificationDelivery)
            .where(NotificationDelivery.status != "SENT")
            .order_by(NotificationDelivery.id.desc())
        ).first()
        assert row is not None
        assert (row.status, row.attempts, row.last_error) == (
            "PENDING",
            1,
            "channel 'alerts': notification not delivered after 1 attempt(s): HTTP 503",
        )
        due = row.next_attempt_at
    await asyncio.to_thread(notifier.send_due, due + timedelta(milliseconds=1))
    assert len(receiver.requests) == 2
    keys = {headers["idempotency-key"] for headers, _ in receiver.requests}
    assert len(keys) == 1


async def test_a_channel_naming_a_missing_tenant_secret_fails_the_delivery_with_its_name(
    service: Service, receiver: Receiver
) -> None:
    tenant = await service.tenant("admin")  # no hook_secret set
    await tenant.apply(failing("unsigned", [{"on": ["failure"], "channel": "alerts"}]))
    notifier = notifier_for(service, {"alerts": hook(receiver.url)})
    await run_to_end(tenant, "unsigned")
    await rounds(notifier)
    assert receiver.requests == []
    with service.sessions() as session:
        tenant_id = get_tenant(session, tenant.name).id  # type: ignore[union-attr]
        row = session.scalars(
            select(NotificationDelivery).where(NotificationDelivery.tenant_id == tenant_id)
        ).one()
    assert row.status == "FAILED"
    assert "hook_secret" in (row.last_error or "")


# -- SLA --------------------------------------------------------------------------------------


def sla_pipeline(name: str, start: datetime, **sla: Any) -> dict[str, Any]:
    """A schedule firing every 2 s with exactly one interval, [start, start + 2 s)."""
    return {
        "name": name,
        "schedule": {
            "cron": "* * * * * */2",
            "start_date": start.isoformat(),
            "end_date": (start + timedelta(seconds=1)).isoformat(),
            "catchup": True,
        },
        "sla": sla,
        "steps": [{"id": "a", "type": "noop"}],
        "notifications": [{"on": ["sla_missed"], "channel": "alerts"}],
    }


def next_tick(after: float) -> datetime:
    """The first even second at least `after` seconds from now (UTC)."""
    moment = int(time.time() + after) + 1
    return datetime.fromtimestamp(moment + moment % 2, UTC)


def sla_events(service: Service, tenant: Tenant, pipeline: str) -> list[OutboxEvent]:
    with service.sessions() as session:
        tenant_id = get_tenant(session, tenant.name).id  # type: ignore[union-attr]
        pipeline_id = session.scalar(
            select(Pipeline.id).where(Pipeline.tenant_id == tenant_id, Pipeline.name == pipeline)
        )
        return list(
            session.scalars(
                select(OutboxEvent).where(
                    OutboxEvent.tenant_id == tenant_id,
                    OutboxEvent.key == f"pipeline:{pipeline_id}",
                    OutboxEvent.type == "PIPELINE_SLA_MISSED",
                )
            )
        )


async def test_no_run_at_all_sends_sla_missed_once(service: Service, receiver: Receiver) -> None:
    """A scheduled pipeline whose scheduler never ran (stored straight in the database: no
    scheduler workflow, as when the workers were down): its one interval's deadline passes."""
    tenant = await service.tenant("admin")
    await tenant.http.put("/v1/secrets/hook_secret", json={"value": HOOK_SECRET})
    start = next_tick(2)
    definition = sla_pipeline("unattended", start, after="1s")
    with service.sessions() as session, session.begin():
        found = get_tenant(session, tenant.name)
        assert found is not None
        create_pipeline(session, found.id, "unattended", definition, actor="test")
    deadline = start + timedelta(seconds=3)  # interval end (start + 2 s) + 1 s
    _, stop, thread = await asyncio.to_thread(
        start_notifier,
        service.sessions,
        secret_key=SECRET_KEY,
        poll=0.2,
        resources=Resources(channels={"alerts": hook(receiver.url)}),
    )
    try:
        while datetime.now(UTC) < deadline - timedelta(milliseconds=300):
            assert sla_events(service, tenant, "unattended") == []  # not before the deadline
            await asyncio.sleep(0.2)
        wait_until = time.monotonic() + 15
        while not receiver.requests and time.monotonic() < wait_until:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # more rounds: still one
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
    events = sla_events(service, tenant, "unattended")
    assert len(events) == 1
    assert events[0].payload["logical_date"] == start.isoformat()
    assert events[0].payload["deadline"] == deadline.isoformat()
    assert events[0].payload["reason"] == "no run for this logical date"
    sent = bodies(receiver)
    assert [(b["on"], b["event"]["type"]) for b in sent] == [("sla_missed", "PIPELINE_SLA_MISSED")]
    assert sent[0]["event"]["data"]["deadline"].startswith(deadline.isoformat()[:19])
    assert verify(*receiver.requests[0], HOOK_SECRET)


async def test_a_run_that_succeeded_before_the_deadline_sends_nothing(
    service: Service, receiver: Receiver
) -> None:
    """Through the API: the real scheduler fires the interval's run on the dev server, it
    succeeds well before the deadline (8 s after the interval's end)."""
    tenant = await service.tenant("admin")
    start = next_tick(2)
    notifier = notifier_for(service, {"alerts": hook(receiver.url)})
    await tenant.apply(sla_pipeline("punctual", start, after="8s"))
    deadline = start + timedelta(seconds=10)
    runs: list[Any] = []
    while datetime.now(UTC) < deadline + timedelta(seconds=1):
        await asyncio.to_thread(notifier.round)
        response = await tenant.http.get("/v1/runs", params={"pipeline": "punctual"})
        runs = response.json()["items"]
        await asyncio.sleep(0.3)
    await rounds(notifier)
    assert [(r["status"], r["logical_date"][:19]) for r in runs] == [
        ("SUCCEEDED", start.isoformat()[:19])
    ]
    assert sla_events(service, tenant, "punctual") == []
    assert receiver.requests == []


async def test_two_notifiers_on_postgresql_send_each_notification_once(
    service: Service, receiver: Receiver
) -> None:
    """Two workers' notifiers over one PostgreSQL database, rounds racing on threads: the
    advisory lock serialises queueing, SKIP LOCKED claims split the sending."""
    if service.kind != "postgresql":
        pytest.skip("several notifiers need PostgreSQL (one notifier on SQLite)")
    tenant = await service.tenant("admin")
    await tenant.http.put("/v1/secrets/hook_secret", json={"value": HOOK_SECRET})
    await tenant.apply(failing("raced", [{"on": ["failure"], "channel": "alerts"}]))
    first = notifier_for(service, {"alerts": hook(receiver.url)})
    second = notifier_for(service, {"alerts": hook(receiver.url)})
    runs = [await run_to_end(tenant, "raced") for _ in range(3)]

    def race(notifier: Notifier) -> None:
        for _ in range(5):
            notifier.round()

    await asyncio.gather(asyncio.to_thread(race, first), asyncio.to_thread(race, second))
    sent = sorted(b["event"]["data"]["run_id"] for b in bodies(receiver))
    assert sent == sorted(run["id"] for run in runs)
