"""/v1/schemas/pipeline.json: the JSON Schema of a definition (editor autocompletion)."""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import APIRouter

from schemas.pipeline import PipelineDefinition

router = APIRouter(prefix="/v1/schemas", tags=["schemas"])


@cache
def pipeline_schema() -> dict[str, Any]:
    schema = PipelineDefinition.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


@router.get("/pipeline.json")
def pipeline_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a pipeline definition. Public: it holds no tenant data."""
    return pipeline_schema()
