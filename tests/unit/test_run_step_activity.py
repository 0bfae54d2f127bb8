"""The `run_step` activity adapter, run in the SDK's ActivityEnvironment (no server): it is the
one place that heartbeats for every step type, and it stamps the attempt across lost workers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.steps import StepActivities
from schemas.pipeline import NoopStep, PythonStep, SqlStep, Step
from schemas.run import RunContext, RunStepInput
from steps.engines.duckdb import DuckDBEngine
from steps.registry import build_executors


def environment(heartbeat_timeout: timedelta | None, attempt: int = 1) -> tuple[Any, list[Any]]:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=heartbeat_timeout, attempt=attempt)
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    return env, beats


def step_input(step: Step, source_dir: Path, attempt_offset: int = 0) -> RunStepInput:
    moment = datetime(2026, 1, 31, tzinfo=UTC)
    context = RunContext.manual("test", "default/test/manual__2026-01-31", moment)
    return RunStepInput(
        step=step, context=context, source_dir=str(source_dir), attempt_offset=attempt_offset
    )


def activities(engine: DuckDBEngine, tmp_path: Path) -> StepActivities:
    return StepActivities(build_executors(engine), tmp_path / "work")


async def test_heartbeats_while_a_sql_step_runs_and_cancel_interrupts_it(
    engine: DuckDBEngine, tmp_path: Path, slow_query: str
) -> None:
    env, beats = environment(timedelta(seconds=1.5))  # heartbeat every 0.5 s
    step = SqlStep(id="slow", type="sql", sql=slow_query)
    task = asyncio.create_task(
        env.run(activities(engine, tmp_path).run_step, step_input(step, tmp_path))
    )
    await asyncio.sleep(1.8)
    assert not task.done()
    assert len(beats) >= 3
    started = time.monotonic()
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 2.0


async def test_heartbeats_while_a_python_step_runs(engine: DuckDBEngine, tmp_path: Path) -> None:
    (tmp_path / "sleepy.py").write_text("import time\ntime.sleep(1.8)\n")
    env, beats = environment(timedelta(seconds=1.5))
    step = PythonStep(id="sleepy", type="python", script="sleepy.py")
    result = await env.run(activities(engine, tmp_path).run_step, step_input(step, tmp_path))
    assert result.log_path is not None
    assert len(beats) >= 3


async def test_no_heartbeat_timeout_no_heartbeats(engine: DuckDBEngine, tmp_path: Path) -> None:
    env, beats = environment(None)
    (tmp_path / "short.py").write_text("import time\ntime.sleep(0.7)\n")
    step = PythonStep(id="short", type="python", script="short.py")
    await env.run(activities(engine, tmp_path).run_step, step_input(step, tmp_path))
    assert beats == []


async def test_attempt_counts_attempts_spent_before_a_lost_worker(
    engine: DuckDBEngine, tmp_path: Path
) -> None:
    env, _ = environment(None, attempt=2)
    step = NoopStep(id="n", type="noop")
    result = await env.run(
        activities(engine, tmp_path).run_step, step_input(step, tmp_path, attempt_offset=3)
    )
    assert result.attempt == 5
    assert result.started_at is not None and result.finished_at is not None
    assert result.started_at <= result.finished_at


async def test_a_table_written_on_another_workers_duckdb_fails_with_that_said(
    tmp_path: Path,
) -> None:
    """Two workers, two DuckDB warehouses: the downstream step on the other worker is told
    where its table is, instead of DuckDB's bare 'table does not exist'."""
    from temporalio.exceptions import ApplicationError

    from schemas.run import UpstreamResult

    first, second = DuckDBEngine(tmp_path / "w1.duckdb"), DuckDBEngine(tmp_path / "w2.duckdb")
    try:
        write = SqlStep(id="a", type="sql", sql="CREATE TABLE t AS SELECT 1 AS x")
        env, _ = environment(None)
        await env.run(
            StepActivities(build_executors(first), tmp_path / "w1", warehouse=first).run_step,
            step_input(write, tmp_path),
        )
        read = SqlStep(id="b", type="sql", sql="SELECT * FROM {{ steps.a.outputs['t'] }}")
        upstream = step_input(read, tmp_path).model_copy(
            update={"upstream": {"a": UpstreamResult(tables={"t": "t"})}}
        )
        same = StepActivities(build_executors(first), tmp_path / "w1", warehouse=first)
        env, _ = environment(None)
        await env.run(same.run_step, upstream)  # on the worker that has it: fine
        other = StepActivities(build_executors(second), tmp_path / "w2", warehouse=second)
        env, _ = environment(None)
        with pytest.raises(ApplicationError) as caught:
            await env.run(other.run_step, upstream)
        assert caught.value.type == "TableOnOtherWorker" and caught.value.non_retryable
        assert "'t' (from step 'a')" in caught.value.message
    finally:
        first.close()
        second.close()
