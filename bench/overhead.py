"""Benchmark: the per-step floor of Laminar vs bare Temporal on the embedded dev server.

One process starts two dev servers as `laminar run` starts them (unthrottled, see
pipeline_service/temporal/dev_server.py): one in memory, one on a SQLite file (WAL). Systems:
  bare/mem       a bare Temporal chain of no-op activities, in-memory server
  bare/file      the same chain, file server
  bare-nosandbox/file  the same chain, its worker without the SDK's workflow sandbox (which
                 bare/file and the SDK use by default; Laminar's workers run without it)
  laminar/file   Laminar's workflow + worker, a chain of `noop` steps run as regular
                 activities (`local: false`), file server
  laminar-sandbox/file  the same with LAMINAR_WORKFLOW_SANDBOX on (the SDK's sandbox)
  laminar-local  the same pipeline with noop's default (local activities), file server
  (--sql)        chains of `SELECT 1` SQL steps, regular and `local: true`, file server
  laminar+rec/sqlite   laminar/file with run-state recording on (every run has its row, written
                       before the run starts as the launcher does; each step attempt's start
                       and end are written by the worker's background recorder, the run's end
                       by the workflow's local activity): SQLite, as `laminar run` keeps it in
                       the state dir
  laminar+rec/pg       the same recording into PostgreSQL, as the platform keeps it
Measured:
  (a) one 10-step chain end to end: ms per step. The systems take turns (a round runs each
      once, in rotating order) so the machine's noise hits them alike; median and spread
      (p25-p75) over the rounds, and the median of the per-round ratios.
  (b) 50 runs started at once: steps per second and failed runs, also in turns.
Targets: (a) laminar/file <= 1.2 x bare/file; laminar/file <= 1.5 x bare/mem;
         (b) laminar/file >= 0.8 x bare/file throughput, zero failed runs.

    .venv/bin/python bench/overhead.py [--steps 10] [--runs 50] [--rounds 25] [--bursts 3]
        [--throttled]   # the server as it was before: default rate limits, rollback journal
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_chain import BareChainWorkflow, bare_noop
from recording_systems import database, recorded_run, recorded_steps, session_factory
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from pipeline_service.temporal.dev_server import (
    SQLITE_PRAGMAS,
    UNTHROTTLED,
    DevServer,
    start_dev_server,
)
from pipeline_service.temporal.worker import build_worker
from schemas.loading import validate_pipeline
from schemas.run import RunContext, RunInput
from steps.engines.duckdb import DuckDBEngine
from workflows.pipeline_run import PipelineRunWorkflow

Run = Callable[[], Awaitable[Any]]


class RewriteCounter(logging.Handler):
    """Counts recording transactions written again because an event id was written meanwhile
    (by the worker's other writer, or another process)."""

    count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "writing again" in record.getMessage():
            RewriteCounter.count += 1


@dataclass
class System:
    name: str
    run: Run
    single: list[float] = field(default_factory=list)
    bursts: list[float] = field(default_factory=list)
    failed: int = 0


def chain_pipeline(steps: int, local: bool | None, sql: bool = False) -> Any:
    extra: dict[str, Any] = {} if local is None else {"local": local}
    extra |= {"type": "sql", "sql": "SELECT 1"} if sql else {"type": "noop"}
    return validate_pipeline(
        {
            "name": "bench_chain",
            "steps": [
                {"id": f"s{i}", "depends_on": [f"s{i - 1}"] if i else [], **extra}
                for i in range(steps)
            ],
        },
        source_dir=Path("."),
    )


def bare_system(name: str, client: Client, queue: str, steps: int) -> System:
    async def run() -> Any:
        return await client.execute_workflow(
            BareChainWorkflow.run, steps, id=f"bare/{uuid.uuid4()}", task_queue=queue
        )

    return System(name, run)


def laminar_system(
    name: str,
    client: Client,
    queue: str,
    root: Path,
    steps: int,
    local: bool | None,
    sql: bool = False,
) -> System:
    definition = chain_pipeline(steps, local, sql)
    now = datetime.now(UTC)

    async def run() -> Any:
        run_id = f"default/bench_chain/{uuid.uuid4()}"
        context = RunContext.manual(definition.name, run_id, now)
        return await client.execute_workflow(
            PipelineRunWorkflow.run,
            RunInput(pipeline=definition, context=context, source_dir=str(root)),
            id=run_id,
            task_queue=queue,
        )

    return System(name, run)


async def measure(systems: list[System], rounds: int, bursts: int, runs: int) -> None:
    for system in systems:  # warm-up: caches, connections, the limiter's first burst
        for _ in range(3):
            await system.run()
    for i in range(rounds):
        for system in systems[i % len(systems) :] + systems[: i % len(systems)]:
            began = time.perf_counter()
            await system.run()
            system.single.append(time.perf_counter() - began)
    for i in range(bursts):
        for system in systems[i % len(systems) :] + systems[: i % len(systems)]:
            await asyncio.sleep(1)  # let the previous burst's visibility work settle
            began = time.perf_counter()
            outcomes = await asyncio.gather(
                *(system.run() for _ in range(runs)), return_exceptions=True
            )
            system.bursts.append(time.perf_counter() - began)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    system.failed += 1
                    print(f"  {system.name}: failed run: {outcome!r}", file=sys.stderr)


async def main(args: argparse.Namespace) -> None:
    dynamic_config: dict[str, object] = {} if args.throttled else dict(UNTHROTTLED)
    pragmas = {} if args.throttled else SQLITE_PRAGMAS
    for item in args.dynamic_config:
        key, _, value = item.partition("=")
        dynamic_config[key] = json.loads(value)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        servers: list[DevServer] = []
        engine = DuckDBEngine(root / "warehouse.duckdb")
        try:
            clients = {}
            for where, db in (("mem", None), ("file", root / "temporal.db")):
                server, client = await start_dev_server(
                    db,
                    root / f"temporal-{where}.log",
                    ui=False,
                    dynamic_config=dynamic_config,
                    sqlite_pragmas=pragmas,
                )
                servers.append(server)
                clients[where] = client
            await run_all(clients, engine, root, args)
        finally:
            engine.close()
            for server in servers:
                server.stop()


async def run_all(
    clients: dict[str, Client], engine: DuckDBEngine, root: Path, args: argparse.Namespace
) -> None:
    steps = args.steps
    recorded: dict[str, tuple[str, Any]] = {}
    async with AsyncExitStack() as stack:
        systems = []
        for name, where, runner in (
            ("bare/mem", "mem", {}),
            ("bare/file", "file", {}),
            ("bare-nosandbox/file", "file", {"workflow_runner": UnsandboxedWorkflowRunner()}),
        ):
            queue = f"bare-{uuid.uuid4()}"
            worker = Worker(
                clients[where],
                task_queue=queue,
                workflows=[BareChainWorkflow],
                activities=[bare_noop],
                **runner,
            )
            await stack.enter_async_context(worker)
            systems.append(bare_system(name, clients[where], queue, steps))
        queue = f"laminar-{uuid.uuid4()}"
        worker = build_worker(
            clients["file"], task_queue=queue, engine=engine, work_root=root / "work"
        )
        await stack.enter_async_context(worker)
        systems.append(laminar_system("laminar/file", clients["file"], queue, root, steps, False))
        sandbox_queue = f"laminar-sandbox-{uuid.uuid4()}"
        sandboxed = build_worker(
            clients["file"],
            task_queue=sandbox_queue,
            engine=engine,
            work_root=root / "work",
            sandbox=True,
        )
        await stack.enter_async_context(sandboxed)
        systems.append(
            laminar_system(
                "laminar-sandbox/file", clients["file"], sandbox_queue, root, steps, False
            )
        )
        if not args.no_local:
            systems.append(
                laminar_system("laminar-local/file", clients["file"], queue, root, steps, None)
            )
        if not args.no_recording:
            for kind, label in (("sqlite", "laminar+rec/sqlite"), ("postgresql", "laminar+rec/pg")):
                db = stack.enter_context(database(kind, root))
                sessions = session_factory(db)
                rec_queue = f"rec-{kind}-{uuid.uuid4()}"
                rec_worker = build_worker(
                    clients["file"],
                    task_queue=rec_queue,
                    engine=engine,
                    work_root=root / "work",
                    sessions=sessions,
                )
                await stack.enter_async_context(rec_worker)
                definition = chain_pipeline(steps, False)
                run = recorded_run(clients["file"], rec_queue, sessions, definition, root)
                systems.append(System(label, run))
                recorded[label] = (db.url.render_as_string(hide_password=True), sessions)
        if args.sql:  # a sub-second SQL step (`SELECT 1` on DuckDB), regular and local
            for name, local in (("laminar-sql/file", False), ("laminar-sql-local/file", True)):
                systems.append(
                    laminar_system(name, clients["file"], queue, root, steps, local, sql=True)
                )
        await measure(systems, args.rounds, args.bursts, args.runs)
        for label, (url, sessions) in recorded.items():
            print(f"{label}: {recorded_steps(sessions)} step attempt rows recorded in {url}")
        print(
            f"recording transactions written again after an event id race: {RewriteCounter.count}"
        )
    report({s.name: s for s in systems}, args)


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, p25, p75)."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return statistics.median(values), q[0], q[2]


def report(systems: dict[str, System], args: argparse.Namespace) -> None:
    steps, runs = args.steps, args.runs
    server = "throttled (server defaults)" if args.throttled else "unthrottled, WAL"
    print(
        f"\n{steps}-step no-op chain; dev servers {server}; {args.rounds} rounds, "
        f"{args.bursts} bursts of {runs} runs; systems take turns"
    )
    header = f"{'system':<20}{'ms/step median':>15}{'p25-p75':>14}{'steps/s':>10}"
    print(f"{header}{'range':>16}{'failed':>9}")
    for s in systems.values():
        med, q1, q3 = spread([t / steps * 1000 for t in s.single])
        rates = [runs * steps / b for b in s.bursts]
        print(
            f"{s.name:<20}{med:>15.1f}{f'{q1:.1f}-{q3:.1f}':>14}"
            f"{statistics.median(rates):>10.1f}{f'{min(rates):.0f}-{max(rates):.0f}':>16}"
            f"{s.failed:>5}/{runs * len(s.bursts)}"
        )

    def paired(a: str, b: str) -> tuple[float, float, float]:
        return spread([x / y for x, y in zip(systems[a].single, systems[b].single, strict=True)])

    def show(label: str, ratio: tuple[float, float, float], target: str) -> None:
        med, q1, q3 = ratio
        print(f"{label:<44}{med:>6.2f}  (p25-p75 {q1:.2f}-{q3:.2f})  target {target}")

    print()
    show("(a) latency laminar/file : bare/file", paired("laminar/file", "bare/file"), "<= 1.20")
    show("    latency laminar/file : bare/mem", paired("laminar/file", "bare/mem"), "<= 1.50")
    show("    latency bare/file : bare/mem", paired("bare/file", "bare/mem"), "(info)")
    show("    latency laminar/file : bare-nosandbox/file",
         paired("laminar/file", "bare-nosandbox/file"), "(info)")  # fmt: skip
    show("    latency laminar-sandbox/file : bare/file",
         paired("laminar-sandbox/file", "bare/file"), "(info)")  # fmt: skip
    if "laminar-local/file" in systems:
        show("    latency laminar-local/file : bare/file",
             paired("laminar-local/file", "bare/file"), "(info)")  # fmt: skip
    if "laminar-sql/file" in systems:
        show("    latency laminar-sql-local : laminar-sql",
             paired("laminar-sql-local/file", "laminar-sql/file"), "(info)")  # fmt: skip
    lam, bare = systems["laminar/file"], systems["bare/file"]
    throughput = spread([b / lm for lm, b in zip(lam.bursts, bare.bursts, strict=True)])
    show("(b) throughput laminar/file : bare/file", throughput, ">= 0.80")

    def faster(a: str, b: str) -> tuple[float, float, float]:  # throughput of a : b
        return spread([y / x for x, y in zip(systems[a].bursts, systems[b].bursts, strict=True)])

    show("    throughput laminar/file : bare-nosandbox/file",
         faster("laminar/file", "bare-nosandbox/file"), "(info)")  # fmt: skip
    show("    throughput laminar-sandbox/file : bare/file",
         faster("laminar-sandbox/file", "bare/file"), "(info)")  # fmt: skip
    print(f"    failed runs: laminar {lam.failed}, bare {bare.failed}  (target 0)")
    for label, database_name in (
        ("laminar+rec/sqlite", "SQLite"),
        ("laminar+rec/pg", "PostgreSQL"),
    ):
        if label not in systems:
            continue
        rec = systems[label]
        print(f"\nrecording on, into {database_name} (same server as bare/file):")
        show(f"(a) latency {label} : bare/file", paired(label, "bare/file"), "<= 1.20")
        show(f"    latency {label} : laminar/file", paired(label, "laminar/file"), "(info)")
        rec_throughput = spread([b / r for r, b in zip(rec.bursts, bare.bursts, strict=True)])
        show(f"(b) throughput {label} : bare/file", rec_throughput, ">= 0.80")
        show(f"    latency {label} : bare-nosandbox/file",
             paired(label, "bare-nosandbox/file"), "(info)")  # fmt: skip
        show(f"    throughput {label} : bare-nosandbox/file",
             faster(label, "bare-nosandbox/file"), "(info)")  # fmt: skip
        print(f"    failed runs: {rec.failed}  (target 0)")


if __name__ == "__main__":
    recording_log = logging.getLogger("activities.recording")
    recording_log.setLevel(logging.INFO)
    recording_log.addHandler(RewriteCounter())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--throttled", action="store_true")
    parser.add_argument("--no-recording", action="store_true", help="skip the laminar+rec systems")
    parser.add_argument("--no-local", action="store_true", help="skip the laminar-local system")
    parser.add_argument("--sql", action="store_true", help="add chains of SQL steps")
    parser.add_argument(
        "--dynamic-config", action="append", default=[], metavar="KEY=VALUE",
        help="extra server dynamic config (to try a setting)",
    )  # fmt: skip
    asyncio.run(main(parser.parse_args()))
