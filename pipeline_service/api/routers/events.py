"""/v1/events/schemas/{type} and /v1/events/asyncapi.json: the documents consumers read to
understand the events, generated from schemas/events.py (the same ones docs/events/ holds)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from pipeline_service.api.deps import ServicesDep
from pipeline_service.api.problems import not_found
from schemas.event_docs import asyncapi_document, event_json_schema
from schemas.events import EventType, data_schema_uri

router = APIRouter(prefix="/v1/events", tags=["events"])


@router.get("/schemas")
def list_schemas() -> dict[str, str]:
    """Event type -> the `dataschema` URI its events carry (fetch it at /schemas/{type})."""
    return {type.value: data_schema_uri(type) for type in EventType}


@router.get("/schemas/{type}")
def get_schema(type: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event type."""
    try:
        event_type = EventType(type)
    except ValueError:
        raise not_found(f"event type {type!r}") from None
    return event_json_schema(event_type)


@router.get("/asyncapi.json")
def asyncapi(services: ServicesDep) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the events topic (as this service is configured)."""
    return asyncapi_document(services.settings.events_topic)
