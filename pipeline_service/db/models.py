"""Tables of the pipeline service. Alembic migrations (db/migrations) create and change them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from pipeline_service.db.base import Base, UtcDateTime, utcnow

__all__ = [
    "ApiKey",
    "Base",
    "Bundle",
    "NotificationCursor",
    "NotificationDelivery",
    "OutboxEvent",
    "Pipeline",
    "PipelineVersion",
    "Pool",
    "PoolLease",
    "PoolWaiter",
    "Run",
    "SlaWatch",
    "StepRun",
    "Tenant",
    "TenantQuota",
    "TenantSecret",
]

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(120))


class TenantQuota(Base):
    """A tenant's limits, set by the platform admin; no row (or a None field): unlimited."""

    __tablename__ = "tenant_quotas"

    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    max_concurrent_runs: Mapped[int | None] = mapped_column(Integer)
    max_queued_runs: Mapped[int | None] = mapped_column(Integer)
    overflow_policy: Mapped[str] = mapped_column(String(16), default="queue")
    allowed_step_types: Mapped[list[str] | None] = mapped_column(JSON)
    max_steps_per_pipeline: Mapped[int | None] = mapped_column(Integer)
    retry_after_seconds: Mapped[int] = mapped_column(Integer, default=30)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(120))


class TenantSecret(Base):
    """A tenant's secret: only its ciphertext (pipeline_service/secrets/crypto.py) is stored."""

    __tablename__ = "tenant_secrets"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(120))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(120))


class Pool(Base):
    """Named slots that steps (`pool: name`) hold while an attempt runs. `tenant_id` None: a
    global pool every tenant's steps share; a tenant's own pool of the same name wins."""

    __tablename__ = "pools"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    slots: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(120))


class PoolLease(Base):
    """One slot of a pool, held by one step attempt (`holder`)."""

    __tablename__ = "pool_leases"
    __table_args__ = (Index("ix_pool_leases_pool", "pool_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"))
    holder: Mapped[str] = mapped_column(String(500), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(400))
    acquired_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class PoolWaiter(Base):
    """A step attempt waiting for a slot of a full pool; slots go to the earliest `since`.
    `last_seen` is refreshed by each try: a waiter that stopped trying (its run was cancelled
    or its worker died) drops out of the line after a few seconds."""

    __tablename__ = "pool_waiters"
    __table_args__ = (
        Index("ix_pool_waiters_pool", "pool_id"),
        Index("ix_pool_waiters_workflow", "workflow_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"))
    holder: Mapped[str] = mapped_column(String(500), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(400))
    since: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ApiKey(Base):
    """An API key: only the SHA-256 of the secret is stored; the clear key is shown once."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(120))
    prefix: Mapped[str] = mapped_column(String(16))
    """The key's first characters, safe to show, to tell keys apart."""
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(120))
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    tenant: Mapped[Tenant] = relationship(lazy="joined")


class Pipeline(Base):
    __tablename__ = "pipelines"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    status: Mapped[str] = mapped_column(String(16))
    current_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(120))
    updated_by: Mapped[str] = mapped_column(String(120))


class PipelineVersion(Base):
    """One immutable definition of a pipeline; every change makes a new one."""

    __tablename__ = "pipeline_versions"
    __table_args__ = (UniqueConstraint("pipeline_id", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    source_text: Mapped[str | None] = mapped_column(Text)
    """The YAML/JSON text as submitted (comments and order kept for the editor)."""
    digest: Mapped[str] = mapped_column(String(64))
    bundle_digest: Mapped[str | None] = mapped_column(String(64))
    """The version's code bundle (`laminar pipelines apply DIR`); None: scripts resolve in the
    worker's LAMINAR_SOURCE_DIR."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(120))


class Bundle(Base):
    """An immutable set of files (path -> base64), named by its content digest."""

    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("tenant_id", "digest"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64))
    files: Mapped[dict[str, str]] = mapped_column(JSON)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_runs_pipeline_created", "pipeline_id", "created_at", "id"),
        Index("ix_runs_tenant_status", "tenant_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    """The opaque, URL-safe id the API shows."""
    workflow_id: Mapped[str] = mapped_column(String(400), unique=True)
    """`{tenant}/{pipeline}/{logical_date}` or `{tenant}/{pipeline}/key:{idempotency key}`:
    unique, so one logical date (or one key) can never make two runs."""
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(ForeignKey("pipeline_versions.id"))
    status: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(120))
    logical_date: Mapped[datetime] = mapped_column(UtcDateTime)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    retry_of_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    replay_of_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    """A dead-letter replay: the run whose quarantined rows this run re-read."""
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Waiting runs start highest priority first, then oldest first (launcher.Priority)."""
    submitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """When the run took a concurrency slot and its workflow was started; None: it waits in
    the tenant's queue (status QUEUED) for the dispatcher."""
    launch_options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """What a waiting run needs to start later (reused step results, parallelism)."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)


class StepRun(Base):
    """One attempt of one step of a run."""

    __tablename__ = "step_runs"
    __table_args__ = (UniqueConstraint("run_id", "step_id", "attempt"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(24))
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(200))
    rows_affected: Mapped[int | None] = mapped_column(BigInteger)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tables: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    """Output name -> warehouse table the attempt loaded (python `outputs:`); a retry that
    reuses the step hands these on."""
    log_path: Mapped[str | None] = mapped_column(Text)
    marked_by: Mapped[str | None] = mapped_column(String(120))
    mark_reason: Mapped[str | None] = mapped_column(Text)


class OutboxEvent(Base):
    """An event to publish, written in the transaction of the state change it describes."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "sent_at", "seq"),)

    seq: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    """Kafka key: the run's public id (pipeline events: `pipeline:<id>`); orders per key."""
    type: Mapped[str] = mapped_column(String(48))
    actor: Mapped[str] = mapped_column(String(120))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class NotificationCursor(Base):
    """How far the notifier has read the outbox (a feed cursor: high mark and gaps)."""

    __tablename__ = "notification_cursors"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    cursor: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class NotificationDelivery(Base):
    """One notification to send: an event matched by one rule of its pipeline version. Unique
    per (event, rule), so reading an event again never queues it twice."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "rule"),
        Index("ix_notification_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(36))
    rule: Mapped[int] = mapped_column(Integer)
    """The rule's index in the pipeline version's `notifications`."""
    on: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(128))
    event: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The CloudEvent, as the feed serves it."""
    status: Mapped[str] = mapped_column(String(16))
    """PENDING, SENT, or FAILED (attempts exhausted, or refused for good)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class SlaWatch(Base):
    """Up to when a pipeline's SLA deadlines have been checked."""

    __tablename__ = "sla_watches"

    pipeline_id: Mapped[int] = mapped_column(
        ForeignKey("pipelines.id", ondelete="CASCADE"), primary_key=True
    )
    checked_until: Mapped[datetime] = mapped_column(UtcDateTime)
