"""Benchmark: where run-state recording's per-step time goes.

Systems take turns on one unthrottled file dev server (10-step no-op chains, `local: false`):
  laminar/file        no recording (the reference)
  rec-nowrite/<db>    recording on, but no database write at all: the workers' background
                      recorder drops the attempts' events and the `record_run_event` local
                      activity (now once per run, at its end) writes nothing: what the
                      machinery costs by itself
  rec-endonly/<db>    the background recorder drops the attempts' events; the workflow's
                      recording of the run's end writes them all (as after a worker died)
  rec/<db>            recording on, into SQLite (embedded shape) and PostgreSQL (platform)
Printed: ms per step (median over the rounds) with the ratio to laminar/file measured in the
same run, and the time each transaction took inside the worker (median): the local
activity's (on the run's path, once per run) and the background recorder's (off it).

    .venv/bin/python bench/recording_profile.py [--rounds 15] [--steps 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import chain_pipeline, laminar_system
from recording_systems import database, recorded_run, session_factory

import activities.recording as recording
import pipeline_service.temporal.worker as worker_module
from pipeline_service.temporal.dev_server import SQLITE_PRAGMAS, UNTHROTTLED, start_dev_server
from pipeline_service.temporal.worker import build_worker
from schemas.recording import RecordRunEventsInput, RecordRunEventsResult, RunEvent
from steps.engines.duckdb import DuckDBEngine

_real_write = recording.RecordingActivities._write
_real_background = recording.AttemptRecorder._write
_write_seconds: dict[str, list[float]] = {}
_background_seconds: dict[str, list[float]] = {}


class NoWrite(recording.RecordingActivities):
    def _write(self, batches: list[RecordRunEventsInput]) -> list[RecordRunEventsResult]:
        return [RecordRunEventsResult(recorded=0) for _ in batches]


class Dropping(recording.AttemptRecorder):
    def submit(self, workflow_id: str, events: list[RunEvent]) -> None:
        pass


def timed(label: str) -> type[recording.RecordingActivities]:
    class Timed(recording.RecordingActivities):
        def _write(self, batches: list[RecordRunEventsInput]) -> list[RecordRunEventsResult]:
            started = time.perf_counter()
            try:
                return _real_write(self, batches)
            finally:
                _write_seconds.setdefault(label, []).append(time.perf_counter() - started)

    return Timed


def timed_background(label: str) -> type[recording.AttemptRecorder]:
    class Timed(recording.AttemptRecorder):
        def _write(self, batches: list[RecordRunEventsInput]) -> list[RecordRunEventsResult]:
            started = time.perf_counter()
            try:
                return _real_background(self, batches)
            finally:
                _background_seconds.setdefault(label, []).append(time.perf_counter() - started)

    return Timed


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server, client = await start_dev_server(
            root / "temporal.db",
            root / "temporal.log",
            ui=False,
            dynamic_config=dict(UNTHROTTLED),
            sqlite_pragmas=SQLITE_PRAGMAS,
        )
        engine = DuckDBEngine(root / "warehouse.duckdb")
        try:
            async with AsyncExitStack() as stack:
                queue = f"plain-{uuid.uuid4()}"
                await stack.enter_async_context(
                    build_worker(client, task_queue=queue, engine=engine, work_root=root / "w")
                )
                plain = laminar_system("laminar/file", client, queue, root, args.steps, False)
                systems: dict[str, Callable[[], Awaitable[Any]]] = {"laminar/file": plain.run}
                for kind, short in (("sqlite", "sqlite"), ("postgresql", "pg")):
                    db = stack.enter_context(database(kind, root))
                    sessions = session_factory(db)
                    for label, activities, attempts in (
                        (f"rec-nowrite/{short}", NoWrite, Dropping),
                        (f"rec-endonly/{short}", timed(f"rec-endonly/{short}"), Dropping),
                        (
                            f"rec/{short}",
                            timed(f"rec/{short}"),
                            timed_background(f"rec/{short}"),
                        ),
                    ):
                        # build_worker makes its recording activities from these names.
                        worker_module.RecordingActivities = activities  # type: ignore[misc]
                        worker_module.AttemptRecorder = attempts  # type: ignore[misc]
                        rec_queue = f"{label}-{uuid.uuid4()}"
                        worker = build_worker(
                            client,
                            task_queue=rec_queue,
                            engine=engine,
                            work_root=root / "w",
                            sessions=sessions,
                        )
                        await stack.enter_async_context(worker)
                        definition = chain_pipeline(args.steps, False)
                        systems[label] = recorded_run(client, rec_queue, sessions, definition, root)
                times: dict[str, list[float]] = {name: [] for name in systems}
                names = list(systems)
                for round_ in range(args.rounds + 1):
                    for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                        started = time.perf_counter()
                        await systems[name]()
                        if round_:  # the first round warms up
                            times[name].append((time.perf_counter() - started) / args.steps)
        finally:
            engine.close()
            server.stop()
    reference = statistics.median(times["laminar/file"])
    print(f"{args.steps}-step no-op chains, unthrottled file server, {args.rounds} rounds in turns")
    print(
        f"{'system':20} {'ms/step':>8} {'x laminar/file':>15} {'run-end write ms':>17}"
        f" {'background write ms (n)':>24}"
    )
    for name, values in times.items():
        median = statistics.median(values)
        writes = _write_seconds.get(name)
        write = f"{statistics.median(writes) * 1000:17.2f}" if writes else f"{'-':>17}"
        bg = _background_seconds.get(name)
        background = f"{statistics.median(bg) * 1000:.2f} ({len(bg)})" if bg else "-"
        print(f"{name:20} {median * 1000:8.1f} {median / reference:15.2f} {write} {background:>24}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    asyncio.run(main(parser.parse_args()))
