"""A real local HTTP receiver for notification tests (webhooks and Slack-style hooks)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """An HTTP endpoint that answers with the given statuses in turn (then 200)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/laminar"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verify(headers: dict[str, str], body: bytes, secret: str, max_age: float = 300) -> bool:
    """What a receiver does: recompute the HMAC over `timestamp.body`, refuse stale stamps."""
    stamp = headers["x-laminar-timestamp"]
    expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(time.time() - int(stamp)) <= max_age
    return fresh and hmac.compare_digest(headers["x-laminar-signature"], f"sha256={expected}")


EXAMPLE_SECRET = "example-webhook-secret"


def example_channels(url: str) -> dict[str, str]:
    """Settings for the notification channel the examples name, pointing at `url`."""
    return {
        "LAMINAR_CHANNELS__ORDERS_ALERTS__TYPE": "webhook",
        "LAMINAR_CHANNELS__ORDERS_ALERTS__URL": url,
        "LAMINAR_CHANNELS__ORDERS_ALERTS__SECRET": EXAMPLE_SECRET,
        "LAMINAR_CHANNELS__ORDERS_ALERTS__BACKOFF": "0.05",
    }
