"""Benchmark: `for_each` over N items against the same N instances written as N plain steps.

Both run `noop` steps as regular activities (`local: false`) on one dev server (SQLite file,
unthrottled, as `laminar run` starts it) with one Laminar worker, at most P at once:
  for_each   one step `for_each: "{{ params.numbers }}"`, `max_parallel: P` (child runs of 200)
  flat       N independent steps in one run, `max_parallelism: P` (the reference)
Measured, taking turns for R rounds: wall time (median), and the events in the run's own
history and in its largest child history (what Temporal's 51,200-event limit applies to).

    .venv/bin/python bench/for_each.py [--items 1000] [--parallel 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.client import Client

from pipeline_service.temporal.dev_server import start_dev_server
from pipeline_service.temporal.worker import build_worker
from schemas.loading import validate_pipeline
from schemas.run import RunContext, RunInput
from steps.engines.duckdb import DuckDBEngine
from workflows.for_each import FOR_EACH_BATCH
from workflows.pipeline_run import PipelineRunWorkflow


def fan_out(parallel: int) -> Any:
    step = {"id": "fan", "type": "noop", "local": False, "for_each": "{{ params.numbers }}",
            "max_parallel": parallel}  # fmt: skip
    definition = {"name": "fan", "params": {"numbers": {"type": "list"}}, "steps": [step]}
    return validate_pipeline(definition, source_dir=Path("."))


def flat(items: int, parallel: int) -> Any:
    steps = [{"id": f"s{i}", "type": "noop", "local": False} for i in range(items)]
    definition = {"name": "flat", "max_parallelism": parallel, "steps": steps}
    return validate_pipeline(definition, source_dir=Path("."))


async def run_once(
    client: Client, queue: str, definition: Any, items: int
) -> tuple[float, int, int]:
    run_id = f"bench/{definition.name}/{uuid.uuid4()}"
    params = {"numbers": list(range(items))} if definition.name == "fan" else {}
    context = RunContext.manual(definition.name, run_id, datetime.now(UTC), params)
    began = time.perf_counter()
    await client.execute_workflow(
        PipelineRunWorkflow.run,
        RunInput(pipeline=definition, context=context, source_dir="."),
        id=run_id,
        task_queue=queue,
    )
    took = time.perf_counter() - began
    own = len((await client.get_workflow_handle(run_id).fetch_history()).events)
    largest_child = 0
    for number in range(
        (items + FOR_EACH_BATCH - 1) // FOR_EACH_BATCH if definition.name == "fan" else 0
    ):
        child = client.get_workflow_handle(f"{run_id}/fan/for_each/{number}")
        largest_child = max(largest_child, len((await child.fetch_history()).events))
    return took, own, largest_child


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = DuckDBEngine(root / "warehouse.duckdb")
        server, client = await start_dev_server(
            root / "temporal.db", root / "temporal.log", ui=False
        )
        try:
            queue = f"bench-{uuid.uuid4()}"
            worker = build_worker(client, task_queue=queue, engine=engine, work_root=root / "work")
            systems = {"for_each": fan_out(args.parallel), "flat": flat(args.items, args.parallel)}
            results: dict[str, list[tuple[float, int, int]]] = {name: [] for name in systems}
            async with worker:
                for round_ in range(args.rounds):
                    order = list(systems) if round_ % 2 == 0 else list(reversed(systems))
                    for name in order:
                        results[name].append(
                            await run_once(client, queue, systems[name], args.items)
                        )
        finally:
            engine.close()
            server.stop()
    print(f"{args.items} no-op instances, at most {args.parallel} at once, {args.rounds} rounds "
          f"(medians; regular activities, dev server on a SQLite file)")  # fmt: skip
    medians = {name: statistics.median(r[0] for r in rows) for name, rows in results.items()}
    for name, rows in results.items():
        own, child = rows[-1][1], rows[-1][2]
        print(f"  {name:9} {medians[name]:7.2f} s  run history {own:6} events"
              + (f", largest child history {child} events" if child else ""))  # fmt: skip
    print(f"  for_each / flat wall time: {medians['for_each'] / medians['flat']:.2f}")
    own = {name: rows[-1][1] for name, rows in results.items()}
    print(f"  for_each / flat run history: {own['for_each'] / own['flat']:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
