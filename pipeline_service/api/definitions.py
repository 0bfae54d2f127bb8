"""A definition from a request body, validated by the one validator (schemas.loading), with
YAML line and column on each problem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_service.api.models import DefinitionIn, Problem
from pipeline_service.api.positions import locate
from pipeline_service.api.problems import ProblemError
from pipeline_service.bundles import BundleError, bundle_digest, decode_files, materialize
from schemas.loading import PipelineValidationError, parse_document, validate_pipeline
from schemas.pipeline import PipelineDefinition


@dataclass(frozen=True)
class Checked:
    definition: PipelineDefinition
    data: dict[str, Any]
    """The definition as stored (JSON)."""
    source: str | None
    files: dict[str, bytes] | None = None
    """The code bundle sent with the definition, if any."""


def problems_of(exc: PipelineValidationError, body: DefinitionIn | None) -> list[Problem]:
    text = body.source if body is not None and body.format == "yaml" else None
    problems = []
    for problem in exc.problems:
        where = locate(text, problem.path) if text is not None else None
        problems.append(
            Problem(
                path=problem.path,
                message=problem.message,
                line=where[0] if where else None,
                column=where[1] if where else None,
            )
        )
    return problems


def invalid(exc: PipelineValidationError, body: DefinitionIn | None) -> ProblemError:
    problems = problems_of(exc, body)
    listed = "; ".join(f"{p.path}: {p.message}" for p in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return ProblemError(
        422,
        f"the pipeline definition has {len(problems)} problem(s): {listed}{more}",
        title="Invalid pipeline definition",
        errors=[p.model_dump() for p in problems],
    )


def check_definition(body: DefinitionIn, source_dir: Path, bundle_cache: Path) -> Checked:
    """Parse and validate (scripts in the body's bundle if it has one, else in `source_dir`);
    ProblemError(422) listing every problem otherwise."""
    files = None
    if body.files is not None:
        try:
            files = decode_files(body.files)
            source_dir = materialize(bundle_cache, bundle_digest(files), files)
        except BundleError as exc:
            raise ProblemError(422, f"the code bundle is not valid: {exc}") from None
    try:
        data = (
            parse_document(body.source, body.format) if body.source is not None else body.definition
        )
        definition = validate_pipeline(data, source_dir=source_dir)
    except PipelineValidationError as exc:
        raise invalid(exc, body) from None
    return Checked(definition, definition.model_dump(mode="json"), body.source, files)
