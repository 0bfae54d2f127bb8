"""A backfill's intervals, a page at a time, and which of them to run per `reprocess`: the pure
part of the `plan_backfill_page` activity (the API's dry run uses it too)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import islice

from pipeline_service.launcher import workflow_id_for
from pipeline_service.scheduling.fire_times import Cron, Interval, intervals_reversed
from schemas.recording import RUN_FINISHED, RecordedRunStatus
from schemas.scheduling import BackfillItem, BackfillOrder, BackfillPage, BackfillSpec, Reprocess

_RERUN: dict[Reprocess, set[str]] = {
    Reprocess.MISSING: set(),
    Reprocess.FAILED: {RecordedRunStatus.FAILED.value, RecordedRunStatus.CANCELLED.value},
    Reprocess.ALL: {s.value for s in RUN_FINISHED},
}

Statuses = Callable[[list[str]], dict[str, str]]
"""Workflow ids -> the recorded status of those that have a run."""


def backfill_id(spec: BackfillSpec) -> str:
    """The same backfill (pipeline, range, options) has the same id: starting it twice is one."""
    digest = hashlib.sha256(
        json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()
    return f"bf-{digest[:20]}"


def rerun_id(base: str, backfill: str) -> str:
    """The workflow id of a date's run that a backfill runs again (one per backfill)."""
    return f"{base}/backfill:{backfill}"


def intervals(cron: Cron, spec: BackfillSpec, cursor: datetime | None) -> Iterator[Interval]:
    """The spec's intervals in its order, after `cursor` (the last logical date handed out)."""
    if spec.order == BackfillOrder.FORWARD:
        begin = spec.start if cursor is None else cursor + timedelta(microseconds=1)
        return cron.intervals(begin, spec.end)
    return intervals_reversed(cron, spec.start, spec.end if cursor is None else cursor)


def plan_page(
    cron: Cron,
    spec: BackfillSpec,
    backfill: str,
    cursor: datetime | None,
    limit: int,
    statuses: Statuses,
    *,
    count_total: bool = False,
) -> BackfillPage:
    page = list(islice(intervals(cron, spec, cursor), limit + 1))
    exhausted = len(page) <= limit
    page = page[:limit]
    bases = [workflow_id_for(spec.tenant, spec.pipeline, i.start, None) for i in page]
    known = statuses(bases + [rerun_id(b, backfill) for b in bases])
    items: list[BackfillItem] = []
    skipped: list[datetime] = []
    for interval, base in zip(page, bases, strict=True):
        again = rerun_id(base, backfill)
        status = known.get(base)
        if status is None:
            workflow_id, rerun_of = base, None
        elif again in known or status in _RERUN[spec.reprocess]:
            workflow_id, rerun_of = again, base
        else:
            skipped.append(interval.start)
            continue
        items.append(
            BackfillItem(
                logical_date=interval.start,
                interval_end=interval.end,
                workflow_id=workflow_id,
                rerun_of=rerun_of,
            )
        )
    total = sum(1 for _ in cron.intervals(spec.start, spec.end)) if count_total else None
    return BackfillPage(
        items=items,
        skipped=skipped,
        cursor=page[-1].start if page else cursor,
        exhausted=exhausted,
        total=total,
    )
