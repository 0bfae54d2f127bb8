"""Spark steps: spark-submit as a child process group, followed, cancellable, never duplicated.

The driver's output goes to the step log and feeds heartbeat progress (jobs, stages, tasks),
taken from the driver's REST API once a local driver's UI answers.
Cancellation stops the whole process group (the JVM and a PySpark driver's Python). Every
driver carries the step's tag in its command line and a pid file in the step directory, so an
attempt first stops any driver an earlier attempt left running (its worker died mid-job).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from pathlib import Path
from typing import BinaryIO

from schemas.pipeline import SparkStep
from steps.base import StepContext, StepError, StepResult, step_tag
from steps.driver_output import exception_lines
from steps.process import group_alive, spawn_group, tagged_groups, terminate_group
from steps.spark_output import SparkProgress, is_deterministic
from steps.spark_rest import SparkUiClient
from steps.spark_submit import (
    TAG_CONF,
    SparkOptions,
    driver_pod_prefix,
    kill_command,
    spark_home,
    submit_command,
    write_sql_job,
)

LOG_NAME = "step.log"
PID_NAME = "spark-driver.pid"
_PASSED_THROUGH = ("LANG", "LC_ALL", "JAVA_HOME")
_PROGRESS_EVERY = 0.5  # seconds between reads of the log for progress
_UI_POLL_EVERY = 0.5  # seconds between calls of the driver's REST API
_CHUNK = 64 * 1024
_TAIL_BYTES = 256 * 1024


class SparkExecutor:
    """Runs Spark steps with the master and Spark distribution given by `options`."""

    def __init__(self, options: SparkOptions | None = None) -> None:
        self.options = options or SparkOptions()

    async def execute(self, step: SparkStep, ctx: StepContext) -> StepResult:
        work_dir = ctx.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        tag = step_tag(ctx.idempotency_key)
        await self._stop_earlier_drivers(tag, ctx, work_dir)
        sql_job = (
            write_sql_job(step, ctx.run, work_dir, ctx.upstream) if step.sql is not None else None
        )
        argv = submit_command(
            step,
            self.options,
            run=ctx.run,
            step_id=ctx.step_id,
            attempt=ctx.attempt,
            tag=tag,
            source_dir=ctx.source_dir,
            work_dir=work_dir,
            sql_job=sql_job,
            upstream=ctx.upstream,
        )
        progress = SparkProgress()
        log_path = work_dir / LOG_NAME
        with log_path.open("ab") as log:
            log.write(f"--- attempt {ctx.attempt}: {shlex.join(argv)} ---\n".encode())
            log.flush()
            attempt_start = log.tell()
            returncode = await self._run(argv, work_dir, log, progress, ctx)
        if returncode != 0:
            raise _failure(returncode, log_path, attempt_start)
        return StepResult(
            outputs={"master": self.options.master, **progress.summary()},
            log_path=str(log_path),
        )

    def _environment(self, work_dir: Path) -> dict[str, str]:
        env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
        env.update(
            PATH=os.environ.get("PATH", os.defpath),
            HOME=str(work_dir),
            SPARK_HOME=str(spark_home(self.options)),
            PYSPARK_PYTHON=self.options.python,
            PYSPARK_DRIVER_PYTHON=self.options.python,
            PYTHONUNBUFFERED="1",
        )
        if self.options.is_local:
            env["SPARK_LOCAL_IP"] = "127.0.0.1"  # an embedded job listens on loopback only
        return env

    async def _run(
        self,
        argv: list[str],
        work_dir: Path,
        log: BinaryIO,
        progress: SparkProgress,
        ctx: StepContext,
    ) -> int:
        # Straight to the log file, never through a pipe: a busy worker must not be able to
        # stall the driver on a full pipe. Progress is read back from the file.
        process = await spawn_group(argv, cwd=work_dir, env=self._environment(work_dir), stdout=log)
        group = process.pid
        pid_file = work_dir / PID_NAME
        pid_file.write_text(f"{group}\n")
        follower = asyncio.create_task(_follow(Path(log.name), log.tell(), progress, ctx))
        poller = asyncio.create_task(_poll_ui(progress, ctx))
        try:
            returncode = await process.wait()
        except asyncio.CancelledError:
            await self._stop(group, ctx)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(process.wait(), 1.0)  # reap the leader
            raise
        finally:
            await _finish(poller)
            await _finish(follower)
            # The driver is gone: the log, read to its end, has the last word (the REST API's
            # figures are from the last poll, before the final stages finished).
            if progress.rest is not None:
                progress.rest = None
                ctx.heartbeat(progress.details())
            if not group_alive(group):
                pid_file.unlink(missing_ok=True)
        if group_alive(group):
            await terminate_group(group, self.options.terminate_grace)  # leftovers never stay
            pid_file.unlink(missing_ok=True)
        return returncode

    async def _stop(self, group: int, ctx: StepContext) -> None:
        await terminate_group(group, self.options.terminate_grace)
        await self._kill_cluster_driver(ctx)

    async def _kill_cluster_driver(self, ctx: StepContext) -> None:
        """In cluster mode the driver is a pod: stopping spark-submit does not stop it."""
        tag = step_tag(ctx.idempotency_key)
        command = kill_command(self.options, driver_pod_prefix(ctx.run, ctx.step_id, tag))
        if command is None:
            return
        env = self._environment(ctx.work_dir.resolve())
        process = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()

    async def _stop_earlier_drivers(self, tag: str, ctx: StepContext, work_dir: Path) -> None:
        """Stop drivers of earlier attempts of this step that outlived their worker."""
        groups = tagged_groups(f"{TAG_CONF}={tag}")
        pid_file = work_dir / PID_NAME
        if pid_file.exists():
            with contextlib.suppress(ValueError, OSError):
                recorded = int(pid_file.read_text().strip())
                # Only if it still is our driver: a pid can be reused by anything.
                if recorded in tagged_groups(tag):
                    groups.add(recorded)
        if groups:
            with (work_dir / LOG_NAME).open("a") as log:
                log.write(f"laminar: stopping earlier drivers of this step: {sorted(groups)}\n")
            await asyncio.gather(
                *(terminate_group(g, self.options.terminate_grace) for g in groups)
            )
        if ctx.attempt > 1:
            await self._kill_cluster_driver(ctx)
        pid_file.unlink(missing_ok=True)


async def _follow(path: Path, offset: int, progress: SparkProgress, ctx: StepContext) -> None:
    """Read the driver's output from the log as it grows; heartbeat progress when it changes
    (at most once a poll, and a change is reported even if the driver then falls silent)."""
    pending = b""
    with path.open("rb") as log:
        log.seek(offset)
        while True:
            chunk = log.read(_CHUNK)
            if not chunk:
                try:
                    await asyncio.sleep(_PROGRESS_EVERY)
                except asyncio.CancelledError:
                    chunk = log.read()  # the driver exited: read what is left, then stop
                    _feed(pending + chunk + b"\n", progress, ctx)
                    raise
                continue
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()[-_CHUNK:]  # an endless line is cut, not buffered forever
            _feed(b"\n".join(lines), progress, ctx)


async def _poll_ui(progress: SparkProgress, ctx: StepContext) -> None:
    """Once the driver logged its UI port, heartbeat progress from its REST API."""
    client: SparkUiClient | None = None
    try:
        while True:
            await asyncio.sleep(_UI_POLL_EVERY)
            if progress.ui_port is None:
                continue
            client = client or SparkUiClient(progress.ui_port)
            details = await client.progress()
            if details is not None and details != progress.rest:
                progress.rest = details
                ctx.heartbeat(progress.details())
    finally:
        if client is not None:
            await client.close()


def _feed(text: bytes, progress: SparkProgress, ctx: StepContext) -> None:
    changed = False
    for line in text.split(b"\n"):
        changed |= progress.feed(line.decode("utf-8", errors="replace").rstrip("\r"))
    if changed:
        ctx.heartbeat(progress.details())


async def _finish(follower: asyncio.Task[None]) -> None:  # a follower or the UI poller
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower


def _failure(returncode: int, log_path: Path, attempt_start: int) -> StepError:
    with log_path.open("rb") as log:
        size = log.seek(0, os.SEEK_END)
        log.seek(max(attempt_start, size - _TAIL_BYTES))
        text = log.read().decode("utf-8", errors="replace")
    how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with {returncode}"
    errors = exception_lines(text)
    if errors:
        # The root cause first; the exceptions that led to it after, in the order logged.
        context = "".join(f"\n  {line}" for line in errors[:-1])
        message = f"Spark job {how}: {errors[-1]}{context}\n(driver log: {log_path})"
    else:
        tail = "\n".join(text.splitlines()[-10:]) or "(no output)"
        message = f"Spark job {how}; last lines of {log_path}:\n{tail}"
    deterministic = is_deterministic(errors)
    return StepError(
        message,
        error_type="SparkUserError" if deterministic else "SparkJobFailed",
        retryable=not deterministic,
    )
