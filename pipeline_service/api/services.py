"""What the API's requests share: settings, the database, the Temporal client, metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client

from pipeline_service.api.step_logs import StepLogs
from pipeline_service.metrics import ApiMetrics
from pipeline_service.settings import ServiceSettings
from pipeline_service.storage.artifacts import ArtifactStorage
from pipeline_service.temporal.client import connect


class KeyCache:
    """Resolved API keys for a few seconds, so most requests skip the key look-up. A revoked
    key stops working within `ttl` (at once on the replica that revoked it)."""

    def __init__(self, ttl: float = 5.0, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self._entries: dict[str, tuple[float, Any]] = {}

    def get(self, digest: str) -> Any:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, principal: Any) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        self._entries.clear()


@dataclass
class Services:
    settings: ServiceSettings
    engine: Engine
    sessions: sessionmaker[Session]
    metrics: ApiMetrics
    temporal: Client | None = None
    keys: KeyCache = field(default_factory=KeyCache)
    step_logs: StepLogs = field(init=False)
    closing: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(8))
    """Session closes take their threads under this limiter, not the default one that request
    handlers queue on: a close (which returns a pooled connection) must never wait behind
    handlers that themselves wait for a connection. Under a backlog that deadlocked the pool
    until its timeout (measured: at 200 reads/s + 20 triggers/s requests failed after 10 s)."""
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        settings = self.settings
        artifacts = (
            ArtifactStorage(settings.artifact_url, s3_endpoint=settings.s3_endpoint)
            if settings.artifact_url
            else None
        )
        self.step_logs = StepLogs(settings.work_dir, artifacts)

    async def temporal_client(self) -> Client:
        """The Temporal client, connected on first use (the API starts without Temporal)."""
        if self.temporal is None:
            async with self._lock:
                if self.temporal is None:
                    self.temporal = await connect(
                        self.settings.temporal_address, self.settings.temporal_namespace
                    )
        return self.temporal
