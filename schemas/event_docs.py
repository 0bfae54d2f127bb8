"""JSON Schema per event type and the AsyncAPI 3.0 document of the events topic, generated from
schemas/events.py. `python -m schemas.event_docs` writes them to docs/events/; a test keeps the
committed files equal to what the models generate, and the API serves the same documents."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from schemas.events import (
    CONTENT_TYPE,
    SCHEMA_VERSION,
    EventKind,
    EventType,
    LifecycleEvent,
    data_schema_uri,
    event_kind,
)

DEFAULT_TOPIC = "laminar.pipeline-events"
DOCS_DIR = Path(__file__).resolve().parent.parent / "docs" / "events"

# Data fields an event of each kind always fills (the rest may be null).
_REQUIRED = {
    EventKind.RUN: ["run_id", "workflow_id", "logical_date", "version", "status"],
    EventKind.STEP: ["run_id", "workflow_id", "logical_date", "step_id", "attempt", "status"],
    EventKind.DEFINITION: ["status"],
    EventKind.BACKFILL: [],
    EventKind.SLA: ["logical_date", "version", "deadline"],
}


def event_json_schema(type: EventType) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a whole event of this type, envelope and data."""
    schema = copy.deepcopy(LifecycleEvent.model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = data_schema_uri(type)
    schema["title"] = type.value
    schema["properties"]["type"] = {"const": type.value}
    schema["properties"]["dataschema"] = {"const": data_schema_uri(type)}
    schema["$defs"].pop("EventType", None)
    data = schema["$defs"]["EventData"]
    data["required"] = sorted(set(data.get("required", [])) | set(_REQUIRED[event_kind(type)]))
    for name in _REQUIRED[event_kind(type)]:
        # Required here means present and not null.
        prop = data["properties"][name]
        if "anyOf" in prop:
            kept = [alt for alt in prop.pop("anyOf") if alt.get("type") != "null"]
            prop.update(kept[0])
        prop.pop("default", None)
    return schema


def asyncapi_document(topic: str = DEFAULT_TOPIC) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the topic the relay publishes to."""
    messages = {
        type.value: {
            "name": type.value,
            "title": type.value,
            "contentType": CONTENT_TYPE,
            "headers": {
                "type": "object",
                "properties": {
                    "ce_type": {"const": type.value},
                    "ce_id": {"type": "string", "description": "The event id (UUID)."},
                    "laminar_tenant": {"type": "string"},
                    "content-type": {"const": CONTENT_TYPE},
                },
                "required": ["ce_type", "ce_id", "laminar_tenant"],
            },
            "payload": {"$ref": f"#/components/schemas/{type.value}"},
            "bindings": {
                "kafka": {
                    "key": {
                        "type": "string",
                        "description": "The run id (per-run order); definition and SLA "
                        "events: `pipeline:<id>`.",
                    },
                    "bindingVersion": "0.5.0",
                }
            },
        }
        for type in EventType
    }
    schemas = {}
    for type in EventType:
        schema = event_json_schema(type)
        # AsyncAPI components hold plain schemas; refs inside point to the component's own $defs.
        schema.pop("$schema")
        schemas[type.value] = schema
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Laminar lifecycle events",
            "version": SCHEMA_VERSION,
            "description": "Every run, step and definition change of Laminar, as CloudEvents 1.0 "
            "in structured JSON mode. Delivery is at least once: deduplicate by `id`. Events of "
            "one run share a key and arrive in order.",
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": {
            "pipelineEvents": {
                "address": topic,
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
            }
        },
        "operations": {
            "publishPipelineEvents": {
                "action": "send",
                "channel": {"$ref": "#/channels/pipelineEvents"},
                "messages": [
                    {"$ref": f"#/channels/pipelineEvents/messages/{name}"} for name in messages
                ],
            }
        },
        "components": {"messages": messages, "schemas": schemas},
    }


def rendered_documents() -> dict[str, str]:
    """File name -> text of every generated document."""
    files = {f"{type.value}.schema.json": _dump(event_json_schema(type)) for type in EventType}
    files["asyncapi.json"] = _dump(asyncapi_document())
    return files


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write(directory: Path = DOCS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered_documents().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        sys.stdout.write(f"{path}\n")
