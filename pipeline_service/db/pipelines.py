"""Pipelines and their immutable versions, always within one tenant."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline_service.db.base import utcnow
from pipeline_service.db.models import Pipeline, PipelineVersion
from schemas.recording import PipelineStatus


def definition_digest(definition: dict[str, Any], bundle: str | None = None) -> str:
    """A version's identity: its definition and, if it has one, its code bundle."""
    text = json.dumps(definition, sort_keys=True) + (f"\nbundle:{bundle}" if bundle else "")
    return hashlib.sha256(text.encode()).hexdigest()


def get_pipeline(session: Session, tenant_id: int, name: str) -> Pipeline | None:
    return session.scalars(
        select(Pipeline).where(Pipeline.tenant_id == tenant_id, Pipeline.name == name)
    ).one_or_none()


def get_pipeline_version(
    session: Session, tenant_id: int, name: str, number: int | None = None
) -> tuple[Pipeline, PipelineVersion | None] | None:
    """The tenant's pipeline and its version `number` (default: the current one) in one
    query; None: no such pipeline; (pipeline, None): no such version."""
    wanted = Pipeline.current_version if number is None else number
    row = session.execute(
        select(Pipeline, PipelineVersion)
        .outerjoin(
            PipelineVersion,
            (PipelineVersion.pipeline_id == Pipeline.id) & (PipelineVersion.version == wanted),
        )
        .where(Pipeline.tenant_id == tenant_id, Pipeline.name == name)
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def list_pipelines(
    session: Session,
    tenant_id: int,
    *,
    status: str | None = None,
    name_prefix: str | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Pipeline]:
    query = select(Pipeline).where(Pipeline.tenant_id == tenant_id)
    if status:
        query = query.where(Pipeline.status == status)
    if name_prefix:
        query = query.where(Pipeline.name.startswith(name_prefix, autoescape=True))
    if after_id is not None:
        query = query.where(Pipeline.id > after_id)
    return list(session.scalars(query.order_by(Pipeline.id).limit(limit)))


def create_pipeline(
    session: Session,
    tenant_id: int,
    name: str,
    definition: dict[str, Any],
    *,
    actor: str,
    source_text: str | None = None,
    bundle_digest: str | None = None,
) -> tuple[Pipeline, PipelineVersion]:
    pipeline = Pipeline(
        tenant_id=tenant_id,
        name=name,
        status=PipelineStatus.DRAFT.value,
        current_version=1,
        created_by=actor,
        updated_by=actor,
    )
    session.add(pipeline)
    session.flush()
    version = _add_version(session, pipeline, 1, definition, actor, source_text, bundle_digest)
    return pipeline, version


def add_version(
    session: Session,
    pipeline: Pipeline,
    definition: dict[str, Any],
    *,
    actor: str,
    source_text: str | None = None,
    bundle_digest: str | None = None,
) -> PipelineVersion:
    """A new current version (a change of definition puts the pipeline back in DRAFT)."""
    number = pipeline.current_version + 1
    version = _add_version(session, pipeline, number, definition, actor, source_text, bundle_digest)
    pipeline.current_version = number
    pipeline.updated_at, pipeline.updated_by = utcnow(), actor
    if pipeline.status == PipelineStatus.VALIDATED.value:
        pipeline.status = PipelineStatus.DRAFT.value
    return version


def _add_version(
    session: Session,
    pipeline: Pipeline,
    number: int,
    definition: dict[str, Any],
    actor: str,
    source_text: str | None,
    bundle_digest: str | None = None,
) -> PipelineVersion:
    version = PipelineVersion(
        pipeline_id=pipeline.id,
        version=number,
        definition=definition,
        source_text=source_text,
        digest=definition_digest(definition, bundle_digest),
        bundle_digest=bundle_digest,
        created_by=actor,
    )
    session.add(version)
    session.flush()
    return version


def get_version(session: Session, pipeline: Pipeline, number: int) -> PipelineVersion | None:
    return session.scalars(
        select(PipelineVersion).where(
            PipelineVersion.pipeline_id == pipeline.id, PipelineVersion.version == number
        )
    ).one_or_none()


def list_versions(session: Session, pipeline: Pipeline) -> list[PipelineVersion]:
    return list(
        session.scalars(
            select(PipelineVersion)
            .where(PipelineVersion.pipeline_id == pipeline.id)
            .order_by(PipelineVersion.version)
        )
    )


def set_status(session: Session, pipeline: Pipeline, status: PipelineStatus, actor: str) -> None:
    pipeline.status = status.value
    pipeline.updated_at, pipeline.updated_by = utcnow(), actor


def current_definitions(
    session: Session, tenant_id: int, *, with_archived: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """(name, definition of its current version) of each of the tenant's pipelines; archived
    ones only if `with_archived`."""
    query = (
        select(Pipeline.name, PipelineVersion.definition)
        .join(
            PipelineVersion,
            (PipelineVersion.pipeline_id == Pipeline.id)
            & (PipelineVersion.version == Pipeline.current_version),
        )
        .where(Pipeline.tenant_id == tenant_id)
    )
    if not with_archived:
        query = query.where(Pipeline.status != PipelineStatus.ARCHIVED.value)
    return [(name, definition) for name, definition in session.execute(query).all()]
