"""Which downstream gates a successful upstream run opens (DownstreamNotifier._gates), as the
tenant's pipelines change between runs: the notifier keeps who depends on whom per tenant and
reads the definitions again only when the tenant's pipelines moved (a version added, one
archived or restored)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client

from activities.dependencies import DownstreamNotifier
from pipeline_service.db.models import Pipeline
from pipeline_service.db.pipelines import add_version, create_pipeline, set_status
from pipeline_service.db.runs import insert_run
from pipeline_service.db.session import transaction
from schemas.recording import PipelineStatus
from tests.integration.records import new_run, tenant_with_pipeline


def daily(name: str, *upstreams: str) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": {"cron": "@daily", "timezone": "UTC"},
        "depends_on": [{"pipeline": u} for u in upstreams],
        "steps": [{"id": "a", "type": "noop"}],
    }


def test_gates_follow_the_tenants_pipelines_as_they_change(
    sessions: sessionmaker[Session], client: Client
) -> None:
    with transaction(sessions) as session:
        tenant, up, version = tenant_with_pipeline(session, daily("up"))
        run, _ = insert_run(session, new_run(tenant, up, version, "k"))
        workflow_id, tenant_id = run.workflow_id, tenant.id
    notifier = DownstreamNotifier(sessions, client, task_queue="unused")

    def gated() -> list[str]:
        return sorted(gate.pipeline for gate, _ in notifier._gates(workflow_id))

    assert gated() == []
    with transaction(sessions) as session:
        create_pipeline(session, tenant_id, "down", daily("down", "up"), actor="test")
        create_pipeline(session, tenant_id, "other", daily("other"), actor="test")
    assert gated() == ["down"]  # a new pipeline depends on it
    with transaction(sessions) as session:
        other = session.query(Pipeline).filter_by(tenant_id=tenant_id, name="other").one()
        add_version(session, other, daily("other", "up"), actor="test")
    assert gated() == ["down", "other"]  # a new version of another does too
    with transaction(sessions) as session:
        down = session.query(Pipeline).filter_by(tenant_id=tenant_id, name="down").one()
        set_status(session, down, PipelineStatus.ARCHIVED, "test")
    assert gated() == ["other"]  # archived: no gate
    with transaction(sessions) as session:
        down = session.query(Pipeline).filter_by(tenant_id=tenant_id, name="down").one()
        set_status(session, down, PipelineStatus.DRAFT, "test")
    gates = notifier._gates(workflow_id)
    assert sorted(gate.pipeline for gate, _ in gates) == ["down", "other"]
    gate, signal = gates[0]
    assert signal.pipeline == "up" and gate.tenant == tenant.name
    assert signal.logical_date == datetime(2026, 1, 31, tzinfo=UTC)
