"""Benchmark: Laminar's workflow + worker vs a bare Temporal chain of no-op activities.

Both run in this one process against one dev server (SQLite-backed, as `laminar run` uses it):
  (a) one 10-step chain end to end after a warm-up: ms per step (median of several runs);
  (b) 50 runs started at once: steps per second, and how many runs failed.
Targets: (a) Laminar / bare <= 1.2; (b) Laminar >= 0.8 x bare throughput, zero failed runs.

    .venv/bin/python bench/overhead.py [--steps 10] [--runs 50] [--repeat 15]
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_chain import BareChainWorkflow, bare_noop
from temporalio.client import Client
from temporalio.worker import Worker

from pipeline_service.temporal.dev_server import start_dev_server
from pipeline_service.temporal.worker import build_worker
from schemas.loading import validate_pipeline
from schemas.run import RunContext, RunInput
from steps.engines.duckdb import DuckDBEngine
from workflows.pipeline_run import PipelineRunWorkflow


def chain_pipeline(steps: int) -> Any:
    return validate_pipeline(
        {
            "name": "bench_chain",
            "steps": [
                {"id": f"s{i}", "type": "noop", "depends_on": [f"s{i - 1}"] if i else []}
                for i in range(steps)
            ],
        },
        source_dir=Path("."),
    )


async def measure(
    start_one: Callable[[], Awaitable[Any]], repeat: int, concurrent: int
) -> tuple[float, float, int]:
    """(median seconds of one run, seconds for `concurrent` runs at once, failed runs)."""
    for _ in range(3):  # warm-up
        await start_one()
    single = []
    for _ in range(repeat):
        began = time.perf_counter()
        await start_one()
        single.append(time.perf_counter() - began)
    began = time.perf_counter()
    outcomes = await asyncio.gather(
        *(start_one() for _ in range(concurrent)), return_exceptions=True
    )
    burst = time.perf_counter() - began
    failed = sum(isinstance(o, BaseException) for o in outcomes)
    for o in outcomes:
        if isinstance(o, BaseException):
            print(f"  failed run: {o!r}", file=sys.stderr)
    return statistics.median(single), burst, failed


async def main(steps: int, runs: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server, client = await start_dev_server(
            root / "temporal.db", root / "temporal.log", ui=False
        )
        engine = DuckDBEngine(root / "warehouse.duckdb")
        try:
            results = await run_both(client, engine, root, steps, runs, repeat)
        finally:
            engine.close()
            server.stop()
    report(results, steps, runs)


async def run_both(
    client: Client, engine: DuckDBEngine, root: Path, steps: int, runs: int, repeat: int
) -> dict[str, tuple[float, float, int]]:
    bare_queue, laminar_queue = f"bare-{uuid.uuid4()}", f"laminar-{uuid.uuid4()}"
    definition = chain_pipeline(steps)
    now = datetime.now(UTC)

    async def bare_run() -> Any:
        return await client.execute_workflow(
            BareChainWorkflow.run, steps, id=f"bare/{uuid.uuid4()}", task_queue=bare_queue
        )

    async def laminar_run() -> Any:
        run_id = f"default/bench_chain/{uuid.uuid4()}"
        context = RunContext.manual(definition.name, run_id, now)
        return await client.execute_workflow(
            PipelineRunWorkflow.run,
            RunInput(pipeline=definition, context=context, source_dir=str(root)),
            id=run_id,
            task_queue=laminar_queue,
        )

    bare_worker = Worker(
        client, task_queue=bare_queue, workflows=[BareChainWorkflow], activities=[bare_noop]
    )
    laminar_worker = build_worker(
        client, task_queue=laminar_queue, engine=engine, work_root=root / "work"
    )
    results = {}
    async with bare_worker, laminar_worker:
        # Interleave the two systems so neither gets a warmer machine than the other.
        results["bare temporal"] = await measure(bare_run, repeat, runs)
        results["laminar"] = await measure(laminar_run, repeat, runs)
        second_bare = await measure(bare_run, repeat, runs)
        second_laminar = await measure(laminar_run, repeat, runs)
    for name, extra in (("bare temporal", second_bare), ("laminar", second_laminar)):
        first = results[name]
        results[name] = (
            min(first[0], extra[0]),
            min(first[1], extra[1]),
            first[2] + extra[2],
        )
    return results


def report(results: dict[str, tuple[float, float, int]], steps: int, runs: int) -> None:
    bare, laminar = results["bare temporal"], results["laminar"]
    print(f"\n{steps}-step no-op chain, one dev server (SQLite), one process")
    print(f"{'system':<15}{'ms/step (1 run)':>18}{f'steps/s ({runs} at once)':>24}{'failed':>8}")
    for name, (single, burst, failed) in results.items():
        print(
            f"{name:<15}{single / steps * 1000:>18.1f}"
            f"{runs * steps / burst:>24.1f}{failed:>5}/{runs}"
        )
    latency_ratio = laminar[0] / bare[0]
    throughput_ratio = bare[1] / laminar[1]
    print(f"\n(a) latency ratio laminar/bare:    {latency_ratio:.2f}  (target <= 1.20)")
    print(f"(b) throughput ratio laminar/bare: {throughput_ratio:.2f}  (target >= 0.80)")
    print(f"    failed runs: laminar {laminar[2]}, bare {bare[2]}  (target 0)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.runs, args.repeat))
