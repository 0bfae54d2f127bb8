"""Lifecycle events: the type enum, the data every event carries, and the CloudEvents 1.0
structured envelope that carries it to Kafka and to the events API.

Every recorded state change is one outbox row (pipeline_service/db/outbox.py); `to_cloud_event`
is the one mapping from what a row holds to the published envelope, used by the Kafka relay and
by the API alike, so a consumer sees the same event whichever way it reads it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EventType(StrEnum):
    PIPELINE_QUEUED = "PIPELINE_QUEUED"
    PIPELINE_STARTED = "PIPELINE_STARTED"
    PIPELINE_STEP_STARTED = "PIPELINE_STEP_STARTED"
    PIPELINE_STEP_COMPLETED = "PIPELINE_STEP_COMPLETED"
    PIPELINE_STEP_FAILED = "PIPELINE_STEP_FAILED"
    PIPELINE_STEP_RETRYING = "PIPELINE_STEP_RETRYING"
    PIPELINE_STEP_SKIPPED = "PIPELINE_STEP_SKIPPED"
    PIPELINE_STEP_CANCELLED = "PIPELINE_STEP_CANCELLED"
    PIPELINE_STEP_COMPENSATING = "PIPELINE_STEP_COMPENSATING"
    PIPELINE_STEP_COMPENSATED = "PIPELINE_STEP_COMPENSATED"
    PIPELINE_SUCCEEDED = "PIPELINE_SUCCEEDED"
    PIPELINE_FAILED = "PIPELINE_FAILED"
    PIPELINE_CANCELLED = "PIPELINE_CANCELLED"
    PIPELINE_CREATED = "PIPELINE_CREATED"
    PIPELINE_UPDATED = "PIPELINE_UPDATED"
    PIPELINE_VALIDATED = "PIPELINE_VALIDATED"
    PIPELINE_SCHEDULED = "PIPELINE_SCHEDULED"
    PIPELINE_PAUSED = "PIPELINE_PAUSED"
    PIPELINE_RESUMED = "PIPELINE_RESUMED"
    PIPELINE_ARCHIVED = "PIPELINE_ARCHIVED"
    BACKFILL_STARTED = "BACKFILL_STARTED"
    BACKFILL_COMPLETED = "BACKFILL_COMPLETED"
    PIPELINE_SLA_MISSED = "PIPELINE_SLA_MISSED"


class EventKind(StrEnum):
    """Which fields of the data an event type fills: a run's, a step attempt's, a definition's,
    a backfill's, or a missed deadline's."""

    RUN = "run"
    STEP = "step"
    DEFINITION = "definition"
    BACKFILL = "backfill"
    SLA = "sla"


def event_kind(type: EventType) -> EventKind:
    if type.startswith("PIPELINE_STEP_"):
        return EventKind.STEP
    if type.startswith("BACKFILL_"):
        return EventKind.BACKFILL
    if type == EventType.PIPELINE_SLA_MISSED:
        return EventKind.SLA
    if type in _RUN_TYPES:
        return EventKind.RUN
    return EventKind.DEFINITION


_RUN_TYPES = frozenset(
    {
        EventType.PIPELINE_QUEUED,
        EventType.PIPELINE_STARTED,
        EventType.PIPELINE_SUCCEEDED,
        EventType.PIPELINE_FAILED,
        EventType.PIPELINE_CANCELLED,
    }
)

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
SCHEMA_VERSION = "1"


def data_schema_uri(type: EventType) -> str:
    """The `dataschema` of an event: names the JSON Schema the API serves at
    `/v1/events/schemas/{type}` and the repo keeps in docs/events/."""
    return f"urn:laminar:events:v{SCHEMA_VERSION}:{type.value}"


class EventData(BaseModel):
    """What happened. Fields that do not apply to an event's kind are null (a definition event
    has no run id; a run event no step id)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(description="The tenant's name.")
    pipeline: str = Field(description="The pipeline's name (unique within the tenant).")
    version: int | None = Field(None, description="The pipeline version the event concerns.")
    actor: str = Field(
        description="Who caused the event: an API key's name, `schedule`, `dependency`, "
        "`backfill`, `trigger:<topic>`, `admin`, or `system`."
    )
    run_id: str | None = Field(None, description="The run's public id (the Kafka key).")
    workflow_id: str | None = Field(None, description="The run's Temporal workflow id.")
    logical_date: datetime | None = Field(None, description="The run's logical date (UTC).")
    trigger: str | None = Field(None, description="How the run started (queued events).")
    step_id: str | None = None
    step_type: str | None = None
    attempt: int | None = Field(None, ge=1, description="The step's attempt, from 1.")
    status: str | None = Field(None, description="The run's, step's or pipeline's new status.")
    duration_ms: int | None = Field(
        None, ge=0, description="Run or step attempt duration, when it has finished."
    )
    error: str | None = None
    error_type: str | None = None
    marked_by: str | None = Field(None, description="Set when a person marked the step.")
    reason: str | None = None
    deadline: datetime | None = Field(
        None,
        description="SLA events: when the run of `logical_date` had to have succeeded (UTC).",
    )


class LifecycleEvent(BaseModel):
    """A CloudEvents 1.0 event in structured JSON mode (`application/cloudevents+json`)."""

    model_config = ConfigDict(extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(description="UUID; the same event delivered twice keeps its id.")
    source: str = Field(description="`/laminar/{tenant}/pipelines/{pipeline}`.")
    type: EventType
    subject: str = Field(description="The run id, or `pipeline:{name}` for definition events.")
    time: datetime = Field(description="When the state changed (UTC).")
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str
    data: EventData


class OutboxRecord(BaseModel):
    """What one outbox row holds (the columns `to_cloud_event` reads)."""

    event_id: str
    tenant: str
    key: str
    type: str
    actor: str
    payload: dict[str, Any]
    created_at: datetime


_DATA_FIELDS = frozenset(EventData.model_fields)


def to_cloud_event(record: OutboxRecord) -> LifecycleEvent:
    """Map an outbox row (as written by the launcher, the API and `record_run_events`) onto
    the published envelope."""
    type = EventType(record.type)
    payload = record.payload
    data = EventData.model_validate(
        {
            **{name: value for name, value in payload.items() if name in _DATA_FIELDS},
            "tenant": payload.get("tenant") or record.tenant,
            "actor": record.actor,
        }
    )
    time = payload.get("time") or record.created_at
    subject = data.run_id or f"pipeline:{data.pipeline}"
    return LifecycleEvent(
        id=record.event_id,
        source=f"/laminar/{data.tenant}/pipelines/{data.pipeline}",
        type=type,
        subject=subject,
        time=time,
        dataschema=data_schema_uri(type),
        data=data,
    )
