"""Helpers that put a tenant, a pipeline and a run in a test database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from pipeline_service.db.models import Pipeline, PipelineVersion, Run, Tenant
from pipeline_service.db.pipelines import create_pipeline
from pipeline_service.db.runs import NewRun, insert_run
from pipeline_service.db.tenants import create_tenant

DEFINITION: dict[str, Any] = {"name": "p", "steps": [{"id": "a", "type": "noop"}]}


def tenant_with_pipeline(
    session: Session, definition: dict[str, Any] | None = None
) -> tuple[Tenant, Pipeline, PipelineVersion]:
    tenant = create_tenant(session, f"t-{uuid.uuid4().hex[:10]}", actor="test")
    definition = definition or DEFINITION
    pipeline, version = create_pipeline(
        session, tenant.id, definition["name"], definition, actor="test"
    )
    return tenant, pipeline, version


def new_run(tenant: Tenant, pipeline: Pipeline, version: PipelineVersion, key: str) -> NewRun:
    return NewRun(
        tenant_id=tenant.id,
        pipeline_id=pipeline.id,
        version_id=version.id,
        workflow_id=f"{tenant.name}/{pipeline.name}/key:{key}",
        status="QUEUED",
        trigger="manual",
        actor="test-key",
        logical_date=datetime(2026, 1, 31, tzinfo=UTC),
        params={},
        idempotency_key=key,
    )


def add_run(session: Session, key: str | None = None) -> Run:
    tenant, pipeline, version = tenant_with_pipeline(session)
    run, _ = insert_run(session, new_run(tenant, pipeline, version, key or uuid.uuid4().hex))
    return run
