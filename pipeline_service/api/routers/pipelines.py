"""/v1/pipelines: create (DRAFT), list, get (versions, diff), update (new version), validate
(VALIDATED; also a dry run that stores nothing), pause, resume, archive, graph."""

from __future__ import annotations

import base64
import difflib
from typing import Annotated

import yaml
from fastapi import APIRouter, Query
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline_service.api.definitions import Checked, check_definition, invalid
from pipeline_service.api.deps import OperatorDep, ReaderDep, ServicesDep, SessionDep, tenant_of
from pipeline_service.api.models import (
    DefinitionIn,
    Graph,
    GraphEdge,
    GraphNode,
    PipelineDetail,
    PipelinePage,
    PipelinePublic,
    ValidationReport,
    VersionDiff,
    VersionPublic,
)
from pipeline_service.api.problems import ProblemError, not_found
from pipeline_service.api.routers.schedules import sync_after_change
from pipeline_service.bundles import bundle_dir, store_bundle
from pipeline_service.db import pipelines as repo
from pipeline_service.db import quotas
from pipeline_service.db.models import Pipeline, PipelineVersion
from pipeline_service.db.outbox import add_event
from pipeline_service.scheduling.dependencies import dependency_cycle
from schemas.events import EventType
from schemas.loading import PipelineValidationError, validate_pipeline
from schemas.pipeline import PipelineDefinition
from schemas.recording import PipelineStatus
from workflows import dag

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


def encode_cursor(value: int) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (ValueError, UnicodeDecodeError):
        raise ProblemError(422, "the cursor is not valid: pass `next_cursor` as given") from None


def _public(pipeline: Pipeline) -> PipelinePublic:
    return PipelinePublic.model_validate(pipeline, from_attributes=True)


def _pipeline(session: Session, tenant_id: int, name: str) -> Pipeline:
    pipeline = repo.get_pipeline(session, tenant_id, name)
    if pipeline is None:
        raise not_found(f"pipeline '{name}'")
    return pipeline


def _version(session: Session, pipeline: Pipeline, number: int) -> PipelineVersion:
    version = repo.get_version(session, pipeline, number)
    if version is None:
        raise not_found(f"version {number} of pipeline '{pipeline.name}'")
    return version


def _detail(session: Session, pipeline: Pipeline, number: int | None = None) -> PipelineDetail:
    version = _version(session, pipeline, number or pipeline.current_version)
    versions = [
        VersionPublic.model_validate(v, from_attributes=True)
        for v in repo.list_versions(session, pipeline)
    ]
    return PipelineDetail(
        **_public(pipeline).model_dump(),
        version=version.version,
        definition=version.definition,
        source=version.source_text,
        versions=versions,
    )


def _within_quota(session: Session, tenant_id: int, checked: Checked) -> None:
    """A definition the tenant's quota would refuse to run is refused when stored, too."""
    steps = [step.type for step in checked.definition.steps]
    problems = quotas.definition_problems(quotas.get_quota(session, tenant_id), steps)
    if problems:
        raise ProblemError(403, "; ".join(problems))


def _store_bundle(session: Session, tenant_id: int, checked: Checked) -> str | None:
    if checked.files is None:
        return None
    return store_bundle(session, tenant_id, checked.files)


def _event(session: Session, pipeline: Pipeline, type: EventType, actor: str) -> None:
    add_event(
        session,
        tenant_id=pipeline.tenant_id,
        key=f"pipeline:{pipeline.id}",
        type=type,
        actor=actor,
        payload={
            "pipeline": pipeline.name,
            "version": pipeline.current_version,
            "status": pipeline.status,
        },
    )


def _check_dependency_cycle(
    session: Session, tenant_id: int, definition: PipelineDefinition
) -> None:
    """422 naming the cycle if this definition closes one among the tenant's pipelines."""
    if not definition.depends_on:
        return
    rows = repo.current_definitions(session, tenant_id, with_archived=True)
    graph = {name: [d["pipeline"] for d in data.get("depends_on") or []] for name, data in rows}
    graph[definition.name] = [d.pipeline for d in definition.depends_on]
    cycle = dependency_cycle(graph)
    if cycle is not None:
        if definition.name in cycle:  # read it from the pipeline being stored
            ring = cycle[:-1]
            at = ring.index(definition.name)
            cycle = ring[at:] + ring[:at] + [definition.name]
        message = f"cycle {' -> '.join(cycle)}"
        raise ProblemError(
            422,
            f"the pipeline definition has 1 problem(s): depends_on: {message}",
            title="Invalid pipeline definition",
            errors=[{"path": "depends_on", "message": message, "line": None, "column": None}],
        )


@router.post("", status_code=201, response_model=PipelineDetail)
def create(
    body: DefinitionIn, principal: OperatorDep, session: SessionDep, services: ServicesDep
) -> PipelineDetail:
    """Store a new pipeline (status DRAFT) from a valid definition."""
    tenant = tenant_of(principal)
    checked = check_definition(body, services.settings.source_dir, services.settings.bundle_cache)
    name = checked.definition.name
    _within_quota(session, tenant.id, checked)
    if repo.get_pipeline(session, tenant.id, name) is not None:
        raise ProblemError(409, f"pipeline '{name}' exists already; PUT /v1/pipelines/{name}")
    _check_dependency_cycle(session, tenant.id, checked.definition)
    try:
        pipeline, _ = repo.create_pipeline(
            session,
            tenant.id,
            name,
            checked.data,
            actor=principal.actor,
            source_text=checked.source,
            bundle_digest=_store_bundle(session, tenant.id, checked),
        )
        _event(session, pipeline, EventType.PIPELINE_CREATED, principal.actor)
        session.commit()
    except IntegrityError:  # created concurrently
        raise ProblemError(409, f"pipeline '{name}' exists already") from None
    if checked.definition.schedule is not None:
        sync_after_change(services, tenant.name, name, has_schedule=True)
    return _detail(session, pipeline)


@router.get("", response_model=PipelinePage)
def list_pipelines(
    principal: ReaderDep,
    session: SessionDep,
    status: PipelineStatus | None = None,
    prefix: Annotated[str | None, Query(max_length=63)] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> PipelinePage:
    rows = repo.list_pipelines(
        session,
        tenant_of(principal).id,
        status=status.value if status else None,
        name_prefix=prefix,
        after_id=decode_cursor(cursor),
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return PipelinePage(
        items=[_public(p) for p in rows],
        next_cursor=encode_cursor(rows[-1].id) if more else None,
    )


@router.post("/validate", response_model=ValidationReport)
def validate_dry_run(
    body: DefinitionIn, principal: ReaderDep, services: ServicesDep
) -> ValidationReport:
    """Validate a definition without storing anything (for an editor, as the user types):
    422 lists every problem with its path and, for YAML text, its line and column."""
    checked = check_definition(body, services.settings.source_dir, services.settings.bundle_cache)
    return _report(checked.definition)


def _report(definition: PipelineDefinition) -> ValidationReport:
    levels = dag.levels(dag.dependencies(definition.steps))
    return ValidationReport(
        valid=True, name=definition.name, steps=len(definition.steps), levels=levels
    )


@router.get("/{name}", response_model=PipelineDetail)
def get(
    name: str,
    principal: ReaderDep,
    session: SessionDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> PipelineDetail:
    """The pipeline, its current (or the given) version's definition and its version history."""
    return _detail(session, _pipeline(session, tenant_of(principal).id, name), version)


@router.get("/{name}/diff", response_model=VersionDiff)
def diff(
    name: str,
    principal: ReaderDep,
    session: SessionDep,
    from_version: Annotated[int, Query(alias="from", ge=1)],
    to_version: Annotated[int | None, Query(alias="to", ge=1)] = None,
) -> VersionDiff:
    pipeline = _pipeline(session, tenant_of(principal).id, name)
    to_number = to_version or pipeline.current_version
    old, new = _version(session, pipeline, from_version), _version(session, pipeline, to_number)
    lines = difflib.unified_diff(
        yaml.safe_dump(old.definition, sort_keys=False).splitlines(keepends=True),
        yaml.safe_dump(new.definition, sort_keys=False).splitlines(keepends=True),
        fromfile=f"{name}@{from_version}",
        tofile=f"{name}@{to_number}",
    )
    return VersionDiff(from_version=from_version, to_version=to_number, diff="".join(lines))


@router.put("/{name}", response_model=PipelineDetail)
def update(
    name: str,
    body: DefinitionIn,
    principal: OperatorDep,
    session: SessionDep,
    services: ServicesDep,
) -> PipelineDetail:
    """Store a new version (the pipeline returns to DRAFT); an unchanged definition adds none."""
    pipeline = _pipeline(session, tenant_of(principal).id, name)
    if pipeline.status == PipelineStatus.ARCHIVED.value:
        raise ProblemError(409, f"pipeline '{name}' is archived")
    checked = check_definition(body, services.settings.source_dir, services.settings.bundle_cache)
    if checked.definition.name != name:
        raise ProblemError(
            422,
            f"the definition's name '{checked.definition.name}' differs from '{name}' "
            "(a pipeline cannot be renamed)",
        )
    _within_quota(session, pipeline.tenant_id, checked)
    current = _version(session, pipeline, pipeline.current_version)
    _check_dependency_cycle(session, pipeline.tenant_id, checked.definition)
    bundle = _store_bundle(session, pipeline.tenant_id, checked)
    if repo.definition_digest(checked.data, bundle) != current.digest:
        repo.add_version(
            session,
            pipeline,
            checked.data,
            actor=principal.actor,
            source_text=checked.source,
            bundle_digest=bundle,
        )
        _event(session, pipeline, EventType.PIPELINE_UPDATED, principal.actor)
        session.commit()
        has_schedule = checked.definition.schedule is not None
        sync_after_change(services, tenant_of(principal).name, name, has_schedule)
    return _detail(session, pipeline)


@router.post("/{name}/validate", response_model=PipelineDetail)
def validate_stored(
    name: str, principal: OperatorDep, session: SessionDep, services: ServicesDep
) -> PipelineDetail:
    """Validate the current version against the tenant's context: VALIDATED, or 422."""
    pipeline = _pipeline(session, tenant_of(principal).id, name)
    version = _version(session, pipeline, pipeline.current_version)
    source_dir = services.settings.source_dir
    if version.bundle_digest is not None:
        source_dir = bundle_dir(
            session, pipeline.tenant_id, version.bundle_digest, services.settings.bundle_cache
        )
    try:
        validate_pipeline(version.definition, source_dir=source_dir)
    except PipelineValidationError as exc:
        raise invalid(exc, None) from None
    if pipeline.status == PipelineStatus.DRAFT.value:
        repo.set_status(session, pipeline, PipelineStatus.VALIDATED, principal.actor)
        _event(session, pipeline, EventType.PIPELINE_VALIDATED, principal.actor)
        session.commit()
    return _detail(session, pipeline)


_TRANSITIONS = {
    "pause": (PipelineStatus.PAUSED, EventType.PIPELINE_PAUSED),
    "resume": (PipelineStatus.VALIDATED, EventType.PIPELINE_RESUMED),
    "archive": (PipelineStatus.ARCHIVED, EventType.PIPELINE_ARCHIVED),
}


def _transition(
    action: str, name: str, principal: OperatorDep, session: SessionDep
) -> PipelinePublic:
    pipeline = _pipeline(session, tenant_of(principal).id, name)
    status, event = _TRANSITIONS[action]
    if pipeline.status == PipelineStatus.ARCHIVED.value:
        raise ProblemError(409, f"pipeline '{name}' is archived")
    if action == "resume" and pipeline.status != PipelineStatus.PAUSED.value:
        raise ProblemError(409, f"pipeline '{name}' is {pipeline.status}, not PAUSED")
    if pipeline.status != status.value:
        repo.set_status(session, pipeline, status, principal.actor)
        _event(session, pipeline, event, principal.actor)
        session.commit()
    return _public(pipeline)


@router.post("/{name}/pause", response_model=PipelinePublic)
def pause(name: str, principal: OperatorDep, session: SessionDep) -> PipelinePublic:
    """Stop new runs from starting (runs in flight continue)."""
    return _transition("pause", name, principal, session)


@router.post("/{name}/resume", response_model=PipelinePublic)
def resume(name: str, principal: OperatorDep, session: SessionDep) -> PipelinePublic:
    return _transition("resume", name, principal, session)


@router.post("/{name}/archive", response_model=PipelinePublic)
def archive(name: str, principal: OperatorDep, session: SessionDep) -> PipelinePublic:
    """Retire the pipeline: no new runs or versions; its history stays readable."""
    return _transition("archive", name, principal, session)


@router.get("/{name}/graph", response_model=Graph)
def graph(
    name: str,
    principal: ReaderDep,
    session: SessionDep,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> Graph:
    """Nodes (with their level) and edges, for drawing the DAG."""
    pipeline = _pipeline(session, tenant_of(principal).id, name)
    stored = _version(session, pipeline, version or pipeline.current_version)
    definition = PipelineDefinition.model_validate(stored.definition)
    graph_ = dag.dependencies(definition.steps)
    level_of = {step_id: i for i, level in enumerate(dag.levels(graph_)) for step_id in level}
    return Graph(
        nodes=[GraphNode(id=s.id, type=s.type, level=level_of[s.id]) for s in definition.steps],
        edges=[
            GraphEdge(source=dep, target=s.id) for s in definition.steps for dep in s.depends_on
        ],
    )
