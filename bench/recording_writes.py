"""Benchmark: the worker's CPU cost of writing run state (`record_many`), without Temporal.

The writes a worker makes for `--runs` runs of `--steps` steps at once, as
bench/overhead.py's recording systems make them, on a scratch SQLite file and a scratch
PostgreSQL database:
  insert_run        each run's first row, one transaction per run (the launcher's)
  attempts          per step, one transaction for all runs' attempt events (the background
                    recorder's group): the run's start (recorded once), the attempt's start
                    and end
    together        start and end in the same transaction (steps shorter than its 50 ms wait)
    apart           start and end in two (longer steps: the end updates the attempt's row)
  run end           the run's end, one transaction per run, as the workflow's local activity
                    writes it (assume new; no read of recorded ids)
Printed: CPU time of this process (time.process_time: the driver and SQLAlchemy, not the
database server) per run and per recorded event, median over the rounds with p25-p75, and
the load average, since the machine may be shared.

    .venv/bin/python bench/recording_writes.py [--runs 50] [--steps 10] [--rounds 7]
        [--databases sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import chain_pipeline
from recording_systems import add_run_row, database, session_factory
from sqlalchemy.orm import Session, sessionmaker

from activities.recording import RecordingActivities, write_checked
from pipeline_service.db.pipelines import create_pipeline
from pipeline_service.db.session import transaction
from pipeline_service.db.tenants import create_tenant
from schemas.recording import (
    RecordedRunStatus,
    RecordRunEventsInput,
    RunEvent,
    RunTransition,
    attempt_ended_event,
    attempt_started_event,
    run_started_event,
)
from schemas.run import StepResult


def _runs(sessions: sessionmaker[Session], ids: tuple[int, int, int], count: int) -> list[str]:
    now = datetime.now(UTC)
    workflow_ids = [f"bench/chain/{uuid.uuid4()}" for _ in range(count)]
    for workflow_id in workflow_ids:
        add_run_row(sessions, ids, workflow_id, now)
    return workflow_ids


def _record(
    sessions: sessionmaker[Session], workflow_ids: list[str], steps: int, apart: bool
) -> tuple[float, int]:
    """One run's recording for every run: (CPU seconds spent writing, events recorded). The
    events are built before the clock starts."""
    temporal_ids = {workflow_id: str(uuid.uuid4()) for workflow_id in workflow_ids}
    groups: list[list[RecordRunEventsInput]] = []
    for step in range(steps):
        started: list[RecordRunEventsInput] = []
        ended: list[RecordRunEventsInput] = []
        for workflow_id, run in temporal_ids.items():
            at = datetime.now(UTC)
            start = [
                run_started_event(run, at),
                attempt_started_event(run, f"s{step}", "noop", 1, at),
            ]
            end = attempt_ended_event(
                run,
                f"s{step}",
                "noop",
                1,
                at,
                result=StepResult(started_at=at, finished_at=datetime.now(UTC)),
            )
            started.append(RecordRunEventsInput(workflow_id=workflow_id, events=start))
            ended.append(RecordRunEventsInput(workflow_id=workflow_id, events=[end]))
        if apart:
            groups += [started, ended]
        else:
            groups.append(
                [
                    RecordRunEventsInput(workflow_id=s.workflow_id, events=s.events + e.events)
                    for s, e in zip(started, ended, strict=True)
                ]
            )
    at = datetime.now(UTC)
    ends = [
        RecordRunEventsInput(
            workflow_id=workflow_id,
            events=[
                RunEvent(
                    event_id=str(uuid.uuid4()),
                    at=at,
                    run=RunTransition(status=RecordedRunStatus.SUCCEEDED, at=at),
                )
            ],
        )
        for workflow_id in workflow_ids
    ]
    local_activity = RecordingActivities(sessions)
    recorded = 0
    started_cpu = time.process_time()
    for group in groups:
        recorded += sum(r.recorded for r in write_checked(sessions, group))
    for batch in ends:
        recorded += local_activity._write([batch])[0].recorded
    return time.process_time() - started_cpu, recorded


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    q = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.2f} (p25-p75 {q[0]:.2f}-{q[2]:.2f})"


def measure(kind: str, runs: int, steps: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as engine:
        sessions = session_factory(engine)
        definition = chain_pipeline(steps, False)
        with transaction(sessions) as session:
            tenant = create_tenant(session, "bench", actor="bench")
            pipeline, version = create_pipeline(
                session,
                tenant.id,
                definition.name,
                definition.model_dump(mode="json"),
                actor="bench",
            )
            ids = (tenant.id, pipeline.id, version.id)
        _record(sessions, _runs(sessions, ids, runs), steps, apart=False)  # warm-up
        inserts: list[float] = []
        per_run: dict[str, list[float]] = {"together": [], "apart": []}
        per_event: dict[str, list[float]] = {"together": [], "apart": []}
        for round in range(rounds):
            for mode in ("together", "apart") if round % 2 else ("apart", "together"):
                started = time.process_time()
                workflow_ids = _runs(sessions, ids, runs)
                inserts.append((time.process_time() - started) * 1000 / runs)
                cpu, events = _record(sessions, workflow_ids, steps, apart=mode == "apart")
                cpu_ms = cpu * 1000
                per_run[mode].append(cpu_ms / runs)
                per_event[mode].append(cpu_ms / events)
        print(f"{kind}: {runs} runs x {steps} steps, {rounds} rounds; CPU ms of this process")
        print(f"  insert_run           per run   {_spread(inserts)}")
        for mode in ("together", "apart"):
            print(f"  recording ({mode:8}) per run   {_spread(per_run[mode])}")
            print(f"  recording ({mode:8}) per event {_spread(per_event[mode])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    for kind in args.databases.split(","):
        measure(kind, args.runs, args.steps, args.rounds)
    print("load average at end:   {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
