"""Benchmark: the cost of the artifact store (LAMINAR_ARTIFACT_URL) for DuckDB hand-off tables.

A python step loads a table of --rows rows (its `outputs:`) and a second python step reads it
(`inputs:`), both through the real `run_step` activity (the SDK's ActivityEnvironment, no
server), each with its own DuckDB warehouse per worker. Figures, medians of --repeat:

  produce   the producing step: without a store (reference) / with a store (export + upload)
  same      the consuming step on the worker that wrote the table: no store / store (no import)
  other     the consuming step on another worker: with the store (download + load), against
            `same` without a store as the reference

With --kind sql the same for two DuckDB `sql` steps: `CREATE OR REPLACE TABLE big AS ...` (the
store's run adds a look at the warehouse's tables before and after, and the export) and
`SELECT count(*) FROM big` (given `big` as a table its ancestor wrote).

Stores: a local directory (file://) and moto's S3 server (the stand-in for S3 here; a real S3
adds network latency and bandwidth, not measured).

    .venv/bin/python bench/handoff.py [--rows 1000000] [--repeat 3] [--kind python|sql]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.testing import ActivityEnvironment

from activities.artifacts import ArtifactStore
from activities.steps import StepActivities
from pipeline_service.storage.artifacts import ArtifactStorage
from schemas.pipeline import PythonStep, SqlStep, Step
from schemas.run import RunContext, RunStepInput, StepResult, UpstreamResult
from steps.engines.duckdb import DuckDBEngine
from steps.registry import build_executors
from tests.s3_standin import s3_standin

PRODUCE = """\
import duckdb, sys
duckdb.connect().execute(
    "COPY (SELECT range AS id, range % 97 AS k, md5(range::VARCHAR) AS v"
    f" FROM range({sys.argv[1]})) TO 'big.parquet' (FORMAT parquet)"
)
"""
CONSUME = """\
import duckdb, json, os
context = json.load(open(os.environ["LAMINAR_CONTEXT"]))
n = duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)", [context["inputs"]["big"]])
json.dump({"rows": n.fetchone()[0]}, open(os.environ["LAMINAR_RESULT"], "w"))
"""


def env() -> ActivityEnvironment:
    e = ActivityEnvironment()
    e.info = dataclasses.replace(e.info, heartbeat_timeout=timedelta(seconds=30))
    return e


def step_input(step: Step, source: Path, run: str, **upstream: UpstreamResult) -> RunStepInput:
    context = RunContext.manual("bench", run, datetime(2026, 1, 31, tzinfo=UTC))
    context = context.model_copy(update={"tenant": "acme"})
    return RunStepInput(step=step, context=context, source_dir=str(source), upstream=upstream)


async def timed(activities: StepActivities, input: RunStepInput) -> tuple[float, StepResult]:
    started = time.perf_counter()
    result = await env().run(activities.run_step, input)
    return time.perf_counter() - started, result


def python_steps(rows: int) -> tuple[Step, Step]:
    produce = PythonStep(
        id="produce", type="python", script="produce.py", args=[str(rows)],
        outputs={"big": "big.parquet"},
    )  # fmt: skip
    consume = PythonStep(
        id="consume", type="python", script="consume.py",
        args=["{{ steps.produce.outputs.big }}"], inputs=["big"],
    )  # fmt: skip
    return produce, consume


def sql_steps(rows: int) -> tuple[Step, Step]:
    produce = SqlStep(
        id="produce", type="sql",
        sql="CREATE OR REPLACE TABLE big AS SELECT range AS id, range % 97 AS k, "
        f"md5(range::VARCHAR) AS v FROM range({int(rows)})",
    )  # fmt: skip
    consume = SqlStep(id="consume", type="sql", sql="SELECT count(*) AS n FROM big", preview_rows=1)
    return produce, consume


async def measure(
    store: ArtifactStore | None, rows: int, repeat: int, root: Path, kind: str
) -> dict[str, list[float]]:
    source = root / "pipeline"
    source.mkdir(parents=True, exist_ok=True)
    (source / "produce.py").write_text(PRODUCE)
    (source / "consume.py").write_text(CONSUME)
    produce, consume = sql_steps(rows) if kind == "sql" else python_steps(rows)
    tag = "store" if store is not None else "none"
    root.mkdir(parents=True, exist_ok=True)
    figures: dict[str, list[float]] = {"produce": [], "same": [], "other": []}
    for n in range(repeat):
        run = f"acme/bench/{tag}-{n}"
        workers = []
        for name in ("a", "b"):
            warehouse = DuckDBEngine(root / f"{tag}-{n}-{name}.duckdb")
            workers.append(
                (
                    warehouse,
                    StepActivities(
                        build_executors(warehouse),
                        root / f"{tag}-{n}-{name}",
                        warehouse=warehouse,
                        artifacts=store,
                    ),
                )
            )
        (_, a), (_, b) = workers
        seconds, result = await timed(a, step_input(produce, source, run))
        figures["produce"].append(seconds)
        reading = step_input(consume, source, run, produce=UpstreamResult(tables=result.tables))
        # What the workflow gives a step whose ancestor wrote tables (empty without a store).
        reading.handoff_tables = dict.fromkeys(result.written, "produce")
        figures["same"].append((await timed(a, reading))[0])
        if store is not None:
            seconds, out = await timed(b, reading)
            counted = out.outputs["preview"]["rows"][0][0] if kind == "sql" else out.outputs["rows"]
            assert counted == rows, out
            figures["other"].append(seconds)
        for warehouse, _ in workers:
            warehouse.close()
    return figures


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kind", choices=("python", "sql"), default="python")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="laminar-bench-handoff-") as tmp:
        root = Path(tmp)
        stores: dict[str, ArtifactStore | None] = {
            "(none)": None,
            "file://": ArtifactStorage(f"file://{root / 'store'}"),
        }
        moto = s3_standin()
        standin = moto.__enter__()
        try:
            bucket = standin.new_bucket()
            stores["s3 (moto stand-in)"] = ArtifactStorage(
                f"s3://{bucket}/artifacts", s3_endpoint=standin.endpoint
            )
            # Interleaved: each round measures every store, so load drifts hit all alike.
            figures: dict[str, dict[str, list[float]]] = {
                name: {"produce": [], "same": [], "other": []} for name in stores
            }
            for round_ in range(args.repeat):
                for number, (name, store) in enumerate(stores.items()):
                    got = await measure(
                        store, args.rows, 1, root / f"r{round_}-{number}", args.kind
                    )
                    for kind, values in got.items():
                        figures[name][kind] += values
        finally:
            moto.__exit__(None, None, None)
        ref_produce = median_ms(figures["(none)"]["produce"])
        ref_same = median_ms(figures["(none)"]["same"])
        print(
            f"{args.kind} steps, hand-off table: {args.rows} rows (id, k, md5 text); "
            f"medians of {args.repeat}"
        )
        print(f"{'store':<20} {'step':<38} {'ms':>8} {'reference ms':>13} {'ratio':>6}")
        print(f"{'(none)':<20} {'produce (reference)':<38} {ref_produce:>8.0f}")
        print(f"{'(none)':<20} {'consume, same worker (reference)':<38} {ref_same:>8.0f}")
        for name in stores:
            if name == "(none)":
                continue
            rows = [
                ("produce + export/upload", median_ms(figures[name]["produce"]), ref_produce),
                ("consume, same worker (no import)", median_ms(figures[name]["same"]), ref_same),
                ("consume, other worker (import)", median_ms(figures[name]["other"]), ref_same),
            ]
            for label, ms, ref in rows:
                print(f"{name:<20} {label:<38} {ms:>8.0f} {ref:>13.0f} {ms / ref:>6.2f}")


if __name__ == "__main__":
    asyncio.run(main())
