"""Benchmark: a Flink SQL batch step run by Laminar vs submitting the same job directly.

The job is a Flink SQL batch aggregation (datagen -> GROUP BY -> filesystem sink) on a local
session cluster (started once, outside the timed part). "Laminar" is a one-step pipeline run
end to end (workflow start to result) on a warm worker against a dev server; "direct" is the
exact `flink run -py` command and job file Laminar generated (read back from the step log),
run with subprocess. Runs alternate. Target: laminar <= 1.05 x direct + 1 s (medians).

(The issue asked for the SQL Gateway as the direct path; the gateway's jar is not part of the
apache-flink PyPI packages, so Laminar submits SQL with `flink run -py` and its own driver.)

    .venv/bin/python bench/flink_overhead.py [--repeat 5] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline_service.temporal.dev_server import start_dev_server
from pipeline_service.temporal.worker import build_worker
from schemas.loading import validate_pipeline
from schemas.run import RunContext, RunInput
from steps.engines.duckdb import DuckDBEngine
from steps.flink_job import FlinkOptions
from steps.flink_local import DEFAULT_TOOL_DIR, LocalFlinkCluster
from workflows.pipeline_run import PipelineRunWorkflow

SQL = """\
CREATE TABLE src (k INT, v BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '{rows}',
  'fields.k.min' = '0', 'fields.k.max' = '96');
CREATE TABLE dst (k INT, total BIGINT) WITH ('connector' = 'filesystem', 'format' = 'csv',
  'path' = '{out}');
INSERT INTO dst SELECT k, sum(v) FROM src GROUP BY k;
"""


def command_of(log: Path) -> list[str]:
    """The argv Laminar logged for the attempt (`--- attempt N: argv ---`)."""
    first = log.read_text().splitlines()[0]
    return shlex.split(first.split(": ", 1)[1].removesuffix(" ---"))


async def main(repeat: int, rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = LocalFlinkCluster(DEFAULT_TOOL_DIR, root / "flink")
        cluster.start()
        server, client = await start_dev_server(
            root / "temporal.db", root / "temporal.log", ui=False
        )
        engine = DuckDBEngine(root / "warehouse.duckdb")
        queue = f"flink-bench-{uuid.uuid4()}"
        definition = validate_pipeline(
            {
                "name": "flink_bench",
                "steps": [
                    {
                        "id": "agg",
                        "type": "flink",
                        "sql": SQL.format(rows=rows, out=root / "out"),
                        "heartbeat_timeout": "30s",
                    }
                ],
            },
            source_dir=root,
        )
        flink = FlinkOptions(rest_url=cluster.rest_url, poll_interval=0.5)
        laminar_times: list[float] = []
        direct_times: list[float] = []
        try:
            worker = build_worker(
                client, task_queue=queue, engine=engine, work_root=root / "work", flink=flink
            )
            async with worker:

                async def run_laminar() -> float:
                    run_id = f"default/flink_bench/{uuid.uuid4()}"
                    context = RunContext.manual(definition.name, run_id, datetime.now(UTC))
                    began = time.perf_counter()
                    await client.execute_workflow(
                        PipelineRunWorkflow.run,
                        RunInput(pipeline=definition, context=context, source_dir=str(root)),
                        id=run_id,
                        task_queue=queue,
                    )
                    return time.perf_counter() - began

                def run_direct(argv: list[str], step_dir: Path) -> float:
                    env = {
                        "PATH": os.environ["PATH"],
                        "FLINK_CONF_DIR": str(step_dir / "flink-conf"),
                        "PYTHONPATH": str(DEFAULT_TOOL_DIR),
                    }
                    began = time.perf_counter()
                    with (root / "direct.log").open("ab") as log:  # as Laminar logs
                        subprocess.run(
                            argv,
                            env=env,
                            cwd=step_dir,
                            check=True,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    return time.perf_counter() - began

                await run_laminar()  # warms caches (not counted) and yields the command line
                logs = sorted((root / "work").glob("*/agg/step.log"), key=os.path.getmtime)
                argv, step_dir = command_of(logs[-1]), logs[-1].parent
                run_direct(argv, step_dir)
                for i in range(repeat):
                    # Alternate which side goes first, so neither always runs on a warmer cache.
                    if i % 2:
                        direct = run_direct(argv, step_dir)
                        laminar = await run_laminar()
                    else:
                        laminar = await run_laminar()
                        direct = run_direct(argv, step_dir)
                    print(f"round {i + 1}: laminar {laminar:.2f} s, direct {direct:.2f} s")
                    laminar_times.append(laminar)
                    direct_times.append(direct)
        finally:
            engine.close()
            server.stop()
            cluster.stop()
    report(laminar_times, direct_times, rows)


def report(laminar: list[float], direct: list[float], rows: int) -> None:
    lam, dir_ = statistics.median(laminar), statistics.median(direct)
    print(f"\nFlink SQL batch aggregation over {rows} rows, {len(laminar)} runs each (interleaved)")
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    asyncio.run(main(args.repeat, args.rows))
