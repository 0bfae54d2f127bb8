"""The harness shared by bench/spark_overhead.py and bench/flink_overhead.py: one step run by
Laminar vs the exact command Laminar generated for it, run directly.

"Laminar" is a one-step pipeline run end to end (workflow start to result) on a warm worker
against a dev server (SQLite, as `laminar run` uses it). "Direct" is the command line Laminar
logged for the step's attempt (`--- attempt N: argv ---`, the step log's first line), started
the way Laminar starts it (steps/process.py `spawn_group`: its own process group, killed if
this process dies), with its output appended to a log file as Laminar's is. One warm-up run of
each side is not counted; then the rounds alternate which side goes first, so neither always
runs on a warmer cache or a quieter machine. Target: laminar <= 1.05 x direct + 1 s (medians).
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_service.temporal.dev_server import start_dev_server
from pipeline_service.temporal.worker import build_worker
from schemas.pipeline import PipelineDefinition
from schemas.run import RunContext, RunInput
from steps.engines.duckdb import DuckDBEngine
from steps.process import spawn_group
from workflows.pipeline_run import PipelineRunWorkflow

Direct = Callable[[Path], tuple[dict[str, str], Path]]
"""Given the step's work dir of the warm-up run: the environment and cwd of the direct run."""


def command_of(log: Path) -> list[str]:
    """The argv Laminar logged for the attempt (`--- attempt N: argv ---`)."""
    first = log.read_text().splitlines()[0]
    return shlex.split(first.split(": ", 1)[1].removesuffix(" ---"))


async def measure(
    root: Path,
    definition: PipelineDefinition,
    direct: Direct,
    repeat: int,
    **worker_options: Any,
) -> tuple[list[float], list[float]]:
    """Seconds per round of each side, the warm-up runs left out."""
    server, client = await start_dev_server(root / "temporal.db", root / "temporal.log", ui=False)
    engine = DuckDBEngine(root / "warehouse.duckdb")
    queue = f"{definition.name}-{uuid.uuid4()}"
    step_id = definition.steps[0].id
    laminar_times: list[float] = []
    direct_times: list[float] = []
    try:
        worker = build_worker(
            client, task_queue=queue, engine=engine, work_root=root / "work", **worker_options
        )
        async with worker:

            async def run_laminar() -> float:
                run_id = f"default/{definition.name}/{uuid.uuid4()}"
                context = RunContext.manual(definition.name, run_id, datetime.now(UTC))
                began = time.perf_counter()
                await client.execute_workflow(
                    PipelineRunWorkflow.run,
                    RunInput(pipeline=definition, context=context, source_dir=str(root)),
                    id=run_id,
                    task_queue=queue,
                )
                return time.perf_counter() - began

            async def run_direct(argv: list[str], env: dict[str, str], cwd: Path) -> float:
                began = time.perf_counter()
                with (root / "direct.log").open("ab") as log:  # as Laminar logs
                    process = await spawn_group(argv, cwd=cwd, env=env, stdout=log)
                    returncode = await process.wait()
                if returncode != 0:
                    raise subprocess.CalledProcessError(returncode, argv)
                return time.perf_counter() - began

            await run_laminar()  # warms caches (not counted) and yields the command line
            logs = sorted((root / "work").glob(f"*/{step_id}/step.log"), key=os.path.getmtime)
            argv = command_of(logs[-1])
            env, cwd = direct(logs[-1].parent)
            await run_direct(argv, env, cwd)
            for i in range(repeat):
                if i % 2:
                    direct_time = await run_direct(argv, env, cwd)
                    laminar_time = await run_laminar()
                else:
                    laminar_time = await run_laminar()
                    direct_time = await run_direct(argv, env, cwd)
                first = "direct" if i % 2 else "laminar"
                print(
                    f"round {i + 1} ({first} first): laminar {laminar_time:.2f} s, "
                    f"direct {direct_time:.2f} s",
                    flush=True,
                )
                laminar_times.append(laminar_time)
                direct_times.append(direct_time)
    finally:
        engine.close()
        server.stop()
    return laminar_times, direct_times


def report(title: str, laminar: list[float], direct: list[float]) -> None:
    lam, dir_ = statistics.median(laminar), statistics.median(direct)
    print(f"\n{title}, {len(laminar)} runs each (interleaved, sides alternating)")
    load = ", ".join(f"{figure:.1f}" for figure in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (1, 5, 15 min) at the end")
    for name, times in (("laminar", laminar), ("direct", direct)):
        print(
            f"{name:<9} median {statistics.median(times):6.2f} s   "
            f"min {min(times):6.2f} s   max {max(times):6.2f} s"
        )
    budget = 1.05 * dir_ + 1.0
    verdict = "OK" if lam <= budget else "OVER"
    print(
        f"ratio laminar/direct {lam / dir_:.3f}; overhead {lam - dir_:+.2f} s; "
        f"target <= 1.05 x direct + 1 s = {budget:.2f} s: {verdict}"
    )
