"""Notification steps against real local receivers: an HTTP server started here (which checks
the signature, timestamp and idempotency key) and an aiosmtpd SMTP server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from schemas.connections import Resources
from schemas.pipeline import NotificationStep
from steps.base import StepError
from steps.notification import NotificationExecutor
from steps.registry import execute_step
from tests.receivers import Receiver, verify
from tests.unit.test_steps import make_ctx

SECRET = "whsec-test-5ecret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline"
    path.mkdir()
    return path


def notify(channel: str = "ops", **fields: Any) -> NotificationStep:
    return NotificationStep.model_validate(
        {
            "id": "tell",
            "type": "notification",
            "channel": channel,
            "message": "orders for {{ ds }} are in ({{ params.region }})",
            **fields,
        }
    )


def webhook(url: str, **fields: Any) -> Resources:
    config = {"type": "webhook", "url": url, "secret": SECRET, "backoff": 0.01, **fields}
    return Resources(channels={"ops": config})


async def test_webhook_is_signed_with_timestamp_and_idempotency_key(
    receiver: Receiver, tmp_path: Path, source_dir: Path
) -> None:
    receiver.statuses = [503]  # the first attempt fails; the channel retries
    ctx = make_ctx(tmp_path, source_dir, "tell", params={"region": "EU"})
    result = await NotificationExecutor(webhook(receiver.url)).execute(notify(), ctx)

    assert result.outputs["attempts"] == 2 and result.outputs["status_code"] == 200
    assert len(receiver.requests) == 2
    headers, body = receiver.requests[-1]
    assert verify(headers, body, SECRET)
    assert not verify(headers, body, "another-secret")
    assert not verify(headers, body.replace(b"EU", b"US"), SECRET)
    assert headers["idempotency-key"] == ctx.idempotency_key == "default/test/2026-01-31/tell"
    assert {h["idempotency-key"] for h, _ in receiver.requests} == {ctx.idempotency_key}
    payload = json.loads(body)
    assert payload["message"] == "orders for 2026-01-31 are in (EU)"
    assert payload["run_id"] == "default/test/2026-01-31"


async def test_webhook_client_error_is_final(
    receiver: Receiver, tmp_path: Path, source_dir: Path
) -> None:
    receiver.statuses = [400]
    with pytest.raises(StepError) as info:
        await NotificationExecutor(webhook(receiver.url)).execute(
            notify(), make_ctx(tmp_path, source_dir, params={"region": "EU"})
        )
    assert not info.value.retryable and "HTTP 400" in info.value.message
    assert len(receiver.requests) == 1


async def test_unreachable_slack_hook_is_retryable_and_hides_its_url(
    tmp_path: Path, source_dir: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/services/T000/B000/XXXXSECRETXXXX"
    resources = Resources(
        channels={"ops": {"type": "slack", "url": url, "max_attempts": 2, "backoff": 0.01}}
    )
    with pytest.raises(StepError) as info:
        await NotificationExecutor(resources).execute(
            notify(), make_ctx(tmp_path, source_dir, params={"region": "EU"})
        )
    assert info.value.retryable and "after 2 attempt(s)" in info.value.message
    assert "XXXXSECRETXXXX" not in info.value.message
    assert "XXXXSECRETXXXX" not in repr(resources)


async def test_slack_message_has_title_and_text(
    receiver: Receiver, tmp_path: Path, source_dir: Path
) -> None:
    resources = Resources(channels={"ops": {"type": "slack", "url": receiver.url}})
    await NotificationExecutor(resources).execute(
        notify(title="Orders {{ ds }}"), make_ctx(tmp_path, source_dir, params={"region": "EU"})
    )
    (_, body), = receiver.requests  # fmt: skip
    assert json.loads(body) == {"text": "*Orders 2026-01-31*\norders for 2026-01-31 are in (EU)"}


async def test_email_arrives_over_smtp(
    smtp: tuple[Inbox, int], tmp_path: Path, source_dir: Path
) -> None:
    inbox, port = smtp
    resources = Resources(
        channels={
            "ops": {
                "type": "email",
                "host": "127.0.0.1",
                "port": port,
                "sender": "laminar@example.test",
                "to": ["data-team@example.test", "oncall@example.test"],
                "starttls": False,  # aiosmtpd here has no certificate
            }
        }
    )
    ctx = make_ctx(tmp_path, source_dir, "tell", params={"region": "EU"})
    result = await NotificationExecutor(resources).execute(notify(title="Orders {{ ds }}"), ctx)
    assert result.outputs["recipients"] == 2
    recipients, message = inbox.messages[-1]
    assert recipients == ["data-team@example.test", "oncall@example.test"]
    assert message["Subject"] == "Orders 2026-01-31"
    assert message["X-Laminar-Idempotency-Key"] == ctx.idempotency_key
    assert message.get_payload(decode=True).decode().strip() == "orders for 2026-01-31 are in (EU)"


async def test_starttls_required_but_not_offered_is_refused(
    smtp: tuple[Inbox, int], tmp_path: Path, source_dir: Path
) -> None:
    _, port = smtp
    resources = Resources(
        channels={
            "ops": {"type": "email", "host": "127.0.0.1", "port": port,
                    "sender": "a@example.test", "to": ["b@example.test"]}
        }
    )  # fmt: skip
    with pytest.raises(StepError) as info:
        await NotificationExecutor(resources).execute(
            notify(), make_ctx(tmp_path, source_dir, params={"region": "EU"})
        )
    assert "does not offer STARTTLS" in info.value.message and not info.value.retryable


async def test_templates_are_sandboxed(
    receiver: Receiver, tmp_path: Path, source_dir: Path
) -> None:
    step = notify(message="{{ run_id.__class__.__mro__ }}")
    executors: Any = {"notification": NotificationExecutor(webhook(receiver.url))}
    with pytest.raises(StepError) as info:
        await execute_step(executors, step, make_ctx(tmp_path, source_dir))
    assert info.value.error_type == "TemplateError" and not info.value.retryable
    assert receiver.requests == []


async def test_unknown_channel_is_a_configuration_error(tmp_path: Path, source_dir: Path) -> None:
    with pytest.raises(StepError) as info:
        await NotificationExecutor(Resources()).execute(
            notify("pager"), make_ctx(tmp_path, source_dir, params={"region": "EU"})
        )
    assert "LAMINAR_CHANNELS__PAGER__TYPE" in info.value.message and not info.value.retryable


def test_secret_from_an_env_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "from-env")
    resources = Resources(
        channels={"ops": {"type": "webhook", "url": "http://x", "secret": {"env": "HOOK_SECRET"}}}
    )
    channel = resources.channel("ops")
    assert channel.secret.get_secret_value() == "from-env"
    assert "from-env" not in repr(resources)


async def test_email_over_starttls_with_login(tmp_path: Path, source_dir: Path) -> None:
    """STARTTLS to an aiosmtpd server with a certificate from a test CA (trustme) that the
    channel's ca_file trusts, and a login the server only accepts over TLS."""
    import ssl

    import trustme
    from aiosmtpd.smtp import AuthResult

    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"smtp-pass-42")

    inbox, port = Inbox(), free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, tls_context=server_tls, require_starttls=True,
        authenticator=authenticate, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    try:
        channel = {
            "type": "email", "host": "127.0.0.1", "port": port, "sender": "a@example.test",
            "to": ["b@example.test"], "username": "laminar", "password": "smtp-pass-42",
            "ca_file": str(ca_file),
        }  # fmt: skip
        await NotificationExecutor(Resources(channels={"ops": channel})).execute(
            notify(), make_ctx(tmp_path, source_dir, params={"region": "EU"})
        )
    finally:
        controller.stop()
    assert len(inbox.messages) == 1
    # (A refused login is not tested here: aiosmtpd 1.4 stalls the connection after one.)
    assert logins == [(b"laminar", b"smtp-pass-42")]


async def test_line_breaks_in_a_title_cannot_add_mail_headers(
    smtp: tuple[Inbox, int], tmp_path: Path, source_dir: Path
) -> None:
    inbox, port = smtp
    resources = Resources(
        channels={
            "ops": {"type": "email", "host": "127.0.0.1", "port": port, "starttls": False,
                    "sender": "a@example.test", "to": ["b@example.test"]}
        }
    )  # fmt: skip
    step = notify(title="Orders {{ params.region }}")
    evil = "EU\r\nBcc: attacker@example.test"
    await NotificationExecutor(resources).execute(
        step, make_ctx(tmp_path, source_dir, params={"region": evil})
    )
    recipients, message = inbox.messages[-1]
    assert recipients == ["b@example.test"]
    assert message["Bcc"] is None
    assert message["Subject"] == "Orders EU Bcc: attacker@example.test"


async def test_a_channel_secret_may_be_a_tenant_secret(
    receiver: Receiver, tmp_path: Path, source_dir: Path
) -> None:
    """`secret: "{{ secrets.hook }}"`: the step signs with the run's tenant's secret (the
    activity resolves the names `connection_secret_names` lists into ctx.secrets)."""
    from dataclasses import replace

    from steps.registry import connection_secret_names

    resources = webhook(receiver.url, secret="{{ secrets.hook }}")
    executor = NotificationExecutor(resources)
    assert connection_secret_names({"notification": executor}, notify()) == {"hook"}
    ctx = make_ctx(tmp_path, source_dir, "tell", params={"region": "EU"})
    await executor.execute(notify(), replace(ctx, secrets={"hook": "tenant-" + SECRET}))
    headers, body = receiver.requests[-1]
    assert verify(headers, body, "tenant-" + SECRET)
    with pytest.raises(StepError) as info:
        await executor.execute(notify(), ctx)  # the tenant has no such secret
    assert info.value.error_type == "ConfigurationError" and "hook" in info.value.message
    assert not info.value.retryable
