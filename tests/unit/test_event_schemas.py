"""The event envelope, its mapping from outbox rows, and the generated documents."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from pipeline_service.api.app import create_app
from pipeline_service.settings import ServiceSettings
from schemas.event_docs import DOCS_DIR, event_json_schema, rendered_documents
from schemas.events import EventType, OutboxRecord, data_schema_uri, to_cloud_event

NOW = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
RUN = {
    "tenant": "acme",
    "pipeline": "sales",
    "version": 3,
    "run_id": "r-abc",
    "workflow_id": "acme/sales/2026-11-24",
    "logical_date": "2026-11-24T00:00:00+00:00",
}
# The payload shapes the outbox holds today: launcher (queued), record_run_events (run, step)
# and the pipelines router (definition events).
ROWS: list[tuple[EventType, str, dict[str, Any]]] = [
    (EventType.PIPELINE_QUEUED, "r-abc", {**RUN, "status": "QUEUED", "trigger": "manual"}),
    (
        EventType.PIPELINE_STARTED,
        "r-abc",
        {**RUN, "time": NOW.isoformat(), "status": "RUNNING", "error": None, "duration_ms": None},
    ),
    (
        EventType.PIPELINE_STEP_FAILED,
        "r-abc",
        {
            **RUN,
            "time": NOW.isoformat(),
            "step_id": "load",
            "step_type": "sql",
            "attempt": 2,
            "status": "FAILED",
            "error": "boom",
            "error_type": "StepError",
            "duration_ms": 1200,
        },
    ),
    (
        EventType.PIPELINE_CREATED,
        "pipeline:7",
        {"pipeline": "sales", "version": 1, "status": "DRAFT"},
    ),
]


def _record(type: EventType, key: str, payload: dict[str, Any]) -> OutboxRecord:
    return OutboxRecord(
        event_id=str(uuid.uuid4()),
        tenant="acme",
        key=key,
        type=type.value,
        actor="ci-key",
        payload=payload,
        created_at=NOW,
    )


@pytest.mark.parametrize(("type", "key", "payload"), ROWS, ids=[row[0].value for row in ROWS])
def test_outbox_rows_map_to_valid_cloud_events(
    type: EventType, key: str, payload: dict[str, Any]
) -> None:
    record = _record(type, key, payload)
    event = to_cloud_event(record)
    body = json.loads(event.model_dump_json())
    jsonschema_rs.validate(event_json_schema(type), body)
    assert body["specversion"] == "1.0"
    assert body["id"] == record.event_id
    assert body["type"] == type.value
    assert body["dataschema"] == data_schema_uri(type)
    assert body["data"]["tenant"] == "acme" and body["data"]["actor"] == "ci-key"
    assert body["source"] == "/laminar/acme/pipelines/sales"
    assert body["subject"] == (payload.get("run_id") or "pipeline:sales")


def test_schema_rejects_an_event_of_another_type_or_missing_run_fields() -> None:
    event = json.loads(to_cloud_event(_record(*ROWS[1])).model_dump_json())
    assert not jsonschema_rs.is_valid(event_json_schema(EventType.PIPELINE_FAILED), event)
    del event["data"]["run_id"]
    assert not jsonschema_rs.is_valid(event_json_schema(EventType.PIPELINE_STARTED), event)


def test_generated_documents_are_committed_and_current() -> None:
    expected = rendered_documents()
    committed = {path.name: path.read_text(encoding="utf-8") for path in DOCS_DIR.glob("*.json")}
    assert set(committed) == set(expected), "run `python -m schemas.event_docs`"
    for name, text in expected.items():
        assert committed[name] == text, f"docs/events/{name} is stale: python -m schemas.event_docs"


def test_api_serves_the_documents(tmp_path: Path) -> None:
    settings = ServiceSettings(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", events_topic="audit.events"
    )
    with TestClient(create_app(settings)) as http:
        schema = http.get("/v1/events/schemas/PIPELINE_STEP_RETRYING")
        assert schema.status_code == 200
        assert schema.json() == event_json_schema(EventType.PIPELINE_STEP_RETRYING)
        assert http.get("/v1/events/schemas/NOPE").status_code == 404
        listing = http.get("/v1/events/schemas").json()
        assert set(listing) == {type.value for type in EventType}
        document = http.get("/v1/events/asyncapi.json").json()
        assert document["asyncapi"] == "3.0.0"
        assert document["channels"]["pipelineEvents"]["address"] == "audit.events"
