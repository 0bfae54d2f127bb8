"""`notification` steps: render a message, send it to a channel named in settings.

Webhooks carry the step's idempotency key (stable across retries of the step in the run) in an
`Idempotency-Key` header, so a receiver can drop the duplicate a retry after a lost response
sends. A channel with a secret signs each request: `X-Laminar-Signature: sha256=<hex>` is the
HMAC-SHA256 of `<timestamp>.<body>` under the secret, with the timestamp in
`X-Laminar-Timestamp`, so a receiver can reject both forgeries and replays of old requests.
Secrets and webhook URLs come from settings and appear in no error message or log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import httpx

from schemas.connections import (
    EmailChannel,
    ResourceError,
    Resources,
    SlackChannel,
    WebhookChannel,
)
from schemas.pipeline import NotificationStep
from schemas.templating import render_text
from steps.base import StepContext, StepError, StepResult

SIGNATURE_HEADER = "X-Laminar-Signature"
TIMESTAMP_HEADER = "X-Laminar-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp` (unix seconds, as text)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


class NotificationExecutor:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    def secret_names(self, channel: str) -> set[str]:
        """The tenant secrets a channel's fields refer to (`{{ secrets.name }}`)."""
        found = self.resources.channels.get(channel)
        return set(found.tenant_secrets.values()) if found is not None else set()

    async def execute(self, step: NotificationStep, ctx: StepContext) -> StepResult:
        try:
            channel = self.resources.channel(step.channel).with_secrets(ctx.secrets)
        except ResourceError as exc:
            raise StepError(str(exc), error_type="ConfigurationError", retryable=False) from exc
        # One line: a rendered value with a line break must not start a new mail header
        # (`Bcc: ...`) or a new paragraph of a chat message.
        title = " ".join(render_text(step.title, ctx.run, ctx.upstream).split())
        message = render_text(step.message, ctx.run, ctx.upstream)
        if isinstance(channel, EmailChannel):
            await asyncio.to_thread(
                send_email, step.channel, channel, title, message, ctx.idempotency_key
            )
            sent = {"recipients": len(channel.to)}
        elif isinstance(channel, WebhookChannel):
            body = {
                "pipeline": ctx.run.pipeline,
                "run_id": ctx.run.run_id,
                "step_id": ctx.step_id,
                "logical_date": ctx.run.logical_date.isoformat(),
                "title": title,
                "message": message,
            }
            sent = await post_json(step.channel, channel, channel.url, body, ctx.idempotency_key)
        else:
            assert isinstance(channel, SlackChannel)
            body = {"text": f"*{title}*\n{message}"}
            url = channel.url.get_secret_value()
            sent = await post_json(step.channel, channel, url, body, ctx.idempotency_key)
        return StepResult(
            outputs={"channel": step.channel, "type": channel.type, "title": title, **sent}
        )


async def post_json(
    name: str,
    channel: WebhookChannel | SlackChannel,
    url: str,
    body: dict[str, Any],
    idempotency_key: str,
    max_attempts: int | None = None,
) -> dict[str, Any]:
    """POST JSON with the channel's retries and backoff (`max_attempts` overrides the channel's:
    the notifier makes one attempt per round); 4xx other than 408/425/429 is final."""
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    last = ""
    attempts = max_attempts or channel.max_attempts
    async with httpx.AsyncClient(timeout=channel.timeout, follow_redirects=False) as client:
        for attempt in range(1, attempts + 1):
            headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: idempotency_key}
            if isinstance(channel, WebhookChannel):
                headers.update(channel.headers)
                if channel.secret is not None:
                    stamp = str(int(time.time()))  # per attempt: a retry is a fresh request
                    headers[TIMESTAMP_HEADER] = stamp
                    headers[SIGNATURE_HEADER] = sign(channel.secret.get_secret_value(), stamp, data)
            try:
                response = await client.post(url, content=data, headers=headers)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"  # the message may contain the (secret) URL
            else:
                if response.status_code < 300:
                    return {"status_code": response.status_code, "attempts": attempt}
                last = f"HTTP {response.status_code}"
                if response.status_code not in _RETRY_STATUS:
                    raise StepError(
                        f"channel {name!r} refused the notification: {last}",
                        error_type="NotificationRejected",
                        retryable=False,
                    )
            if attempt < attempts:
                await asyncio.sleep(channel.backoff * 2 ** (attempt - 1))
    raise StepError(
        f"channel {name!r}: notification not delivered after {attempts} attempt(s): {last}",
        error_type="NotificationFailed",
        retryable=True,
    )


def send_email(
    name: str, channel: EmailChannel, title: str, text: str, idempotency_key: str
) -> None:
    message = EmailMessage()
    message["Subject"] = title
    message["From"] = channel.sender
    message["To"] = ", ".join(channel.to)
    message["Message-ID"] = make_msgid(domain="laminar.local")
    message["X-Laminar-Idempotency-Key"] = idempotency_key
    message.set_content(text)
    try:
        with smtplib.SMTP(channel.host, channel.port, timeout=channel.timeout) as smtp:
            smtp.ehlo()
            if channel.starttls:
                cafile = str(channel.ca_file) if channel.ca_file is not None else None
                smtp.starttls(context=ssl.create_default_context(cafile=cafile))
                smtp.ehlo()
            if channel.username and channel.password is not None:
                smtp.login(channel.username, channel.password.get_secret_value())
            smtp.send_message(message)
    except smtplib.SMTPNotSupportedError as exc:
        raise StepError(
            f"channel {name!r}: the SMTP server does not offer STARTTLS (set starttls: false "
            "only for a server on a trusted network)",
            error_type="NotificationRejected",
            retryable=False,
        ) from exc
    except smtplib.SMTPAuthenticationError as exc:
        raise StepError(
            f"channel {name!r}: SMTP authentication failed",
            error_type="NotificationRejected",
            retryable=False,
        ) from exc
    except smtplib.SMTPRecipientsRefused as exc:
        raise StepError(
            f"channel {name!r}: recipients refused: {', '.join(exc.recipients)}",
            error_type="NotificationRejected",
            retryable=False,
        ) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise StepError(
            f"channel {name!r}: email not sent: {type(exc).__name__}: {exc}",
            error_type="NotificationFailed",
            retryable=True,
        ) from exc
