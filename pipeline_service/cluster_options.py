"""From `laminar run`'s settings to the cluster's options: where the state lives (a local
path, or an object store with a local working copy) and which logical date a run is for."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline_service.cluster_dates import (
    DataInterval,
    interval_for,
    latest_interval,
    parse_logical_date,
    pipeline_cron,
)
from pipeline_service.cluster_remote import RemoteOptions, local_copy_dir
from pipeline_service.settings import RunSettings, default_state_root
from pipeline_service.storage.checkpoints import Retention
from pipeline_service.storage.encryption import SnapshotCipher
from pipeline_service.storage.store import is_url

if TYPE_CHECKING:
    from schemas.pipeline import PipelineDefinition


def state_location(settings: RunSettings, pipeline: str) -> tuple[Path, RemoteOptions | None]:
    """The local state dir, and the remote options when the state lives on an object store."""
    location = settings.state_dir
    if location is None or not is_url(location):
        return Path(location or default_state_root() / pipeline).expanduser().resolve(), None
    remote = RemoteOptions(
        url=location,
        s3_endpoint=settings.s3_endpoint,
        checkpoint_interval=settings.checkpoint_interval,
        retention=Retention(settings.retention.max_checkpoints, settings.retention.max_age),
        restore_from=settings.restore_from,
        lease_ttl=settings.lease_ttl,
        cipher=(
            SnapshotCipher.from_setting(settings.checkpoint_key.get_secret_value())
            if settings.checkpoint_key is not None
            else None
        ),
    )
    local = settings.local_state_dir or local_copy_dir(location)
    return Path(local).expanduser().resolve(), remote


def dated_interval(
    pipeline: PipelineDefinition, logical_date: str | None, latest: bool
) -> DataInterval | None:
    """--logical-date / --latest-interval as a data interval (LogicalDateError if wrong)."""
    if logical_date is None and not latest:
        return None
    cron, zone = pipeline_cron(pipeline.schedule)
    if latest:
        return latest_interval(cron, zone)
    assert logical_date is not None
    return interval_for(parse_logical_date(logical_date, zone), cron, zone)
