"""Benchmark: a Spark step run by Laminar vs the same spark-submit run directly.

The job is a PySpark aggregation over generated rows on `local[2]`. "Laminar" is a one-step
pipeline run end to end (workflow start to result) on a warm worker against a dev server
(SQLite, as `laminar run` uses it); "direct" is the exact spark-submit command line Laminar
generated for it (read back from the step log), run with subprocess. Runs alternate so neither
side gets a quieter machine. Target: laminar <= 1.05 x direct + 1 s (medians).

    .venv/bin/python bench/spark_overhead.py [--repeat 5] [--rows 1000000]
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
from steps.spark import SparkExecutor
from workflows.pipeline_run import PipelineRunWorkflow

JOB = """\
import sys
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
rows, out = int(sys.argv[1]), sys.argv[2]
frame = spark.range(rows).selectExpr("id % 97 AS k", "id * 2 AS v")
frame.groupBy("k").sum("v").write.mode("overwrite").parquet(out)
spark.stop()
"""


def spark_command_of(log: Path) -> list[str]:
    """The argv Laminar logged for the attempt (`--- attempt N: argv ---`)."""
    first = log.read_text().splitlines()[0]
    return shlex.split(first.split(": ", 1)[1].removesuffix(" ---"))


async def main(repeat: int, rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "job.py").write_text(JOB)
        server, client = await start_dev_server(
            root / "temporal.db", root / "temporal.log", ui=False
        )
        engine = DuckDBEngine(root / "warehouse.duckdb")
        queue = f"spark-bench-{uuid.uuid4()}"
        definition = validate_pipeline(
            {
                "name": "spark_bench",
                "steps": [
                    {
                        "id": "agg",
                        "type": "spark",
                        "application": "job.py",
                        "args": [str(rows), str(root / "out")],
                        "heartbeat_timeout": "30s",
                    }
                ],
            },
            source_dir=root,
        )
        env = SparkExecutor()._environment(root / "direct")
        (root / "direct").mkdir()
        laminar_times: list[float] = []
        direct_times: list[float] = []
        try:
            worker = build_worker(client, task_queue=queue, engine=engine, work_root=root / "work")
            async with worker:

                async def run_laminar() -> float:
                    run_id = f"default/spark_bench/{uuid.uuid4()}"
                    context = RunContext.manual(definition.name, run_id, datetime.now(UTC))
                    began = time.perf_counter()
                    await client.execute_workflow(
                        PipelineRunWorkflow.run,
                        RunInput(pipeline=definition, context=context, source_dir=str(root)),
                        id=run_id,
                        task_queue=queue,
                    )
                    return time.perf_counter() - began

                def run_direct(argv: list[str]) -> float:
                    began = time.perf_counter()
                    with (root / "direct" / "driver.log").open("ab") as log:  # as Laminar logs
                        subprocess.run(
                            argv,
                            env=env,
                            cwd=root / "direct",
                            check=True,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    return time.perf_counter() - began

                await run_laminar()  # warms caches (not counted) and yields the command line
                logs = sorted((root / "work").glob("*/agg/step.log"), key=os.path.getmtime)
                argv = spark_command_of(logs[-1])
                run_direct(argv)
                for i in range(repeat):
                    # Alternate which side goes first, so neither always runs on a warmer cache.
                    if i % 2:
                        direct = run_direct(argv)
                        laminar = await run_laminar()
                    else:
                        laminar = await run_laminar()
                        direct = run_direct(argv)
                    print(f"round {i + 1}: laminar {laminar:.2f} s, direct {direct:.2f} s")
                    laminar_times.append(laminar)
                    direct_times.append(direct)
        finally:
            engine.close()
            server.stop()
    report(laminar_times, direct_times, rows)


def report(laminar: list[float], direct: list[float], rows: int) -> None:
    lam, dir_ = statistics.median(laminar), statistics.median(direct)
    print(
        f"\nPySpark aggregation over {rows} rows, local[2], {len(laminar)} runs each (interleaved)"
    )
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
