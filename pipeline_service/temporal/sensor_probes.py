"""What sensor checks look up outside the step layer: objects on a store (through the storage
layer, with the worker's credential chain) and the service's runs table (tenant-scoped)."""

from __future__ import annotations

from datetime import datetime
from functools import cache

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pipeline_service.db.models import Pipeline, Run, Tenant
from pipeline_service.storage.store import ObjectStorage, StorageError
from steps.base import StepError
from steps.sensor import SensorProbes


def sensor_probes(
    sessions: sessionmaker[Session] | None, s3_endpoint: str | None = None
) -> SensorProbes:
    @cache
    def store(url: str) -> ObjectStorage:
        return ObjectStorage(url, s3_endpoint=s3_endpoint)

    def object_exists(url: str, key: str) -> bool:
        try:
            return store(url).exists(key)
        except StorageError as exc:  # bad credentials, no such bucket: retried per the step
            raise StepError(str(exc), error_type="SensorStorageError") from None

    def run_status(tenant: str, pipeline: str, logical_date: datetime) -> str | None:
        assert sessions is not None
        with sessions() as session:
            statuses = session.scalars(
                select(Run.status)
                .join(Pipeline, Pipeline.id == Run.pipeline_id)
                .join(Tenant, Tenant.id == Run.tenant_id)
                .where(
                    Tenant.name == tenant,
                    Pipeline.name == pipeline,
                    Run.logical_date == logical_date,
                )
                .order_by(Run.created_at.desc(), Run.id.desc())
            ).all()
        if "SUCCEEDED" in statuses:
            return "SUCCEEDED"
        return statuses[0] if statuses else None

    return SensorProbes(
        object_exists=object_exists, run_status=run_status if sessions is not None else None
    )
