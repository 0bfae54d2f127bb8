"""Flink steps: SQL through Laminar's PyFlink driver (`flink run -py`), jars through the REST
API; jobs followed, explained and cancelled through the JobManager's REST API.

Every job id a step starts is recorded in its work directory as soon as it is known, and SQL
jobs are named after the step's idempotency key, so an attempt first cancels whatever an
earlier attempt left running on the cluster (its worker died mid-job).

A streaming step keeps running while its job does (steps/flink_stream.py): until the run is
cancelled, which stops the job with a savepoint, or for its `until`. A job that fails fails
the attempt; the next attempt (the step's retry policy) restarts it from its latest
checkpoint. An attempt whose worker died follows on the job its predecessor started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from schemas.pipeline import FlinkStep
from schemas.templating import render_text
from steps.base import StepContext, StepError, StepResult, confined_path, step_tag
from steps.driver_output import exception_lines
from steps.flink_job import (
    FlinkOptions,
    client_conf_dir,
    flink_uri,
    job_config,
    job_name,
    sql_command,
    streaming_config,
    write_sql_job,
)
from steps.flink_rest import (
    TERMINAL,
    FlinkRest,
    FlinkRestError,
    exception_headline,
    vertex_progress,
)
from steps.flink_stream import (
    UNTIL,
    RestorePoint,
    find_restore_point,
    record_point,
    watch_job,
)
from steps.process import spawn_group, tagged_groups, terminate_group

log = logging.getLogger(__name__)

LOG_NAME = "step.log"
JOBS_NAME = "flink-jobs.txt"
_JOB_LINE = re.compile(rb"^laminar: job ([0-9a-f]{32})\s*$", re.MULTILINE)
_PASSED_THROUGH = ("LANG", "LC_ALL", "JAVA_HOME")
# Exceptions that only say "the driver failed": the cause is in the other lines.
_WRAPPERS = ("ProgramAbortException", "Python process exits with code", "Py4JJavaError")


class FlinkExecutor:
    def __init__(self, options: FlinkOptions | None = None) -> None:
        self.options = options or FlinkOptions()

    async def execute(self, step: FlinkStep, ctx: StepContext) -> StepResult:
        work_dir = ctx.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        tag = step_tag(ctx.idempotency_key)
        job_config(step, self.options, tag)  # fails early without a cluster
        assert self.options.rest_url is not None
        rest = FlinkRest(self.options.rest_url)
        jobs: list[str] = []
        streaming = step.mode == "streaming"
        try:
            earlier, adopted = await self._stop_earlier_attempts(rest, tag, work_dir, streaming)
            try:
                restore = None
                if adopted is not None:
                    _note(work_dir, f"following job {adopted}, which an earlier attempt started")
                    _record(jobs, adopted, work_dir)
                else:
                    if streaming:
                        restore = await find_restore_point(
                            rest, step, work_dir, earlier, self.options.s3_endpoint
                        )
                        _note_restart(ctx, work_dir, restore)
                    path = restore.path if restore else None
                    if step.sql is not None:
                        config = job_config(step, self.options, tag, path)
                        await self._run_sql(step, ctx, rest, config, tag, work_dir, jobs, path)
                    else:
                        await self._run_jar(step, ctx, rest, work_dir, jobs, path)
                    result = await self._settle(step, ctx, rest, jobs, work_dir)
                    if not streaming or not jobs:
                        return result
                return await self._watch(step, ctx, rest, jobs, work_dir, restore)
            except asyncio.CancelledError:
                await self._stop_jobs(step, ctx, rest, jobs, work_dir)
                raise
        finally:
            await rest.close()

    # --- starting jobs --------------------------------------------------------------------

    async def _run_sql(
        self,
        step: FlinkStep,
        ctx: StepContext,
        rest: FlinkRest,
        config: dict[str, str],
        tag: str,
        work_dir: Path,
        jobs: list[str],
        restore_path: str | None,
    ) -> None:
        job_path = write_sql_job(step, self.options, ctx, tag, work_dir, restore_path)
        argv = sql_command(self.options, job_path, tag)
        env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
        env.update(
            PATH=os.environ.get("PATH", os.defpath),
            HOME=str(work_dir),
            FLINK_CONF_DIR=str(client_conf_dir(self.options, config, work_dir)),
            FLINK_LOG_DIR=str(work_dir / "flink-log"),
            PYTHONPATH=str(self.options.tool_dir),
            PYTHONUNBUFFERED="1",
        )
        log_path = work_dir / LOG_NAME
        with log_path.open("ab") as log:
            log.write(f"--- attempt {ctx.attempt}: {shlex.join(argv)} ---\n".encode())
            log.flush()
            start = log.tell()
            process = await spawn_group(argv, cwd=work_dir, env=env, stdout=asyncio.subprocess.PIPE)
            follow = asyncio.create_task(self._follow_jobs(rest, jobs, ctx))
            try:
                assert process.stdout is not None
                await self._copy_output(process.stdout, log, jobs, work_dir)
                returncode = await process.wait()
            except asyncio.CancelledError:
                await terminate_group(process.pid, self.options.terminate_grace)
                raise
            finally:
                follow.cancel()
        if returncode != 0:
            raise await self._failure(rest, jobs, log_path, start, f"exited with {returncode}")

    async def _run_jar(
        self,
        step: FlinkStep,
        ctx: StepContext,
        rest: FlinkRest,
        work_dir: Path,
        jobs: list[str],
        restore_path: str | None,
    ) -> None:
        assert step.jar is not None
        jar = confined_path(ctx.source_dir, render_text(step.jar, ctx.run, ctx.upstream), "jar")
        jar_id = await rest.upload_jar(jar)
        body: dict[str, Any] = {
            "programArgsList": [render_text(a, ctx.run, ctx.upstream) for a in step.args]
        }
        if step.entry_class:
            body["entryClass"] = step.entry_class
        if step.parallelism:
            body["parallelism"] = step.parallelism
        if step.mode == "streaming":
            body["flinkConfiguration"] = {**step.conf, **streaming_config(step)}
            if restore_path:
                body["savepointPath"] = flink_uri(restore_path)
        try:
            job_id = await rest.run_jar(jar_id, body)
        except FlinkRestError as exc:
            raise StepError(str(exc), error_type="FlinkJobFailed", retryable=False) from exc
        finally:
            with contextlib.suppress(FlinkRestError):
                await rest.delete_jar(jar_id)
        _record(jobs, job_id, work_dir)

    async def _copy_output(
        self, stream: asyncio.StreamReader, log: BinaryIO, jobs: list[str], work_dir: Path
    ) -> None:
        pending = b""
        while chunk := await stream.read(64 * 1024):
            log.write(chunk)
            log.flush()
            text = pending + chunk
            cut = text.rfind(b"\n") + 1
            for match in _JOB_LINE.finditer(text[:cut]):
                _record(jobs, match[1].decode(), work_dir)
            pending = text[cut:][-64 * 1024 :]

    # --- following jobs -------------------------------------------------------------------

    async def _follow_jobs(self, rest: FlinkRest, jobs: list[str], ctx: StepContext) -> None:
        """Heartbeat the newest job's progress while the driver runs."""
        while True:
            await asyncio.sleep(self.options.poll_interval)
            if jobs:
                with contextlib.suppress(FlinkRestError, OSError):
                    ctx.heartbeat(vertex_progress(await rest.job(jobs[-1])))

    async def _settle(
        self, step: FlinkStep, ctx: StepContext, rest: FlinkRest, jobs: list[str], work_dir: Path
    ) -> StepResult:
        """Batch: wait until every job finished. Streaming: until every job runs."""
        wanted = {"FINISHED"} if step.mode == "batch" else {"RUNNING", "FINISHED"}
        for job_id in jobs:
            while True:
                job = await rest.job(job_id)
                ctx.heartbeat(vertex_progress(job))
                state = job["state"]
                if state in wanted:
                    break
                if state in TERMINAL:
                    raise await self._failure(
                        rest, [job_id], work_dir / LOG_NAME, None, f"job {job_id} is {state}"
                    )
                await asyncio.sleep(self.options.poll_interval)
        return StepResult(
            outputs={"job_ids": jobs, "mode": step.mode},
            log_path=str(work_dir / LOG_NAME),
        )

    async def _failure(
        self, rest: FlinkRest, jobs: list[str], log_path: Path, start: int | None, how: str
    ) -> StepError:
        """The root exception from the REST API when a job failed; else the driver's errors."""
        for job_id in reversed(jobs):
            with contextlib.suppress(FlinkRestError, OSError):
                job = await self._terminal(rest, job_id)
                if job.get("state") == "FAILED":
                    trace = await rest.root_exception(job_id)
                    headline = exception_headline(trace) if trace else "no exception recorded"
                    return StepError(
                        f"Flink job {job_id} FAILED: {headline}\n(driver log: {log_path})",
                        error_type="FlinkJobFailed",
                        retryable=True,
                    )
        text = ""
        if start is not None:
            with log_path.open("rb") as log:
                log.seek(start)
                text = log.read()[-256 * 1024 :].decode("utf-8", errors="replace")
        errors = [e for e in exception_lines(text) if not any(w in e for w in _WRAPPERS)]
        detail = errors[-1] if errors else "no exception in the output"
        context = "".join(f"\n  {line}" for line in errors[:-1])
        deterministic = any(
            name in line for line in errors for name in ("ValidationException", "ParseException")
        )
        return StepError(
            f"Flink SQL driver {how}: {detail}{context}\n(driver log: {log_path})",
            error_type="FlinkUserError" if deterministic else "FlinkJobFailed",
            retryable=not deterministic,
        )

    async def _terminal(self, rest: FlinkRest, job_id: str, wait: float = 15.0) -> dict[str, Any]:
        """The job once it reached a final state (a failing job reports FAILING first)."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            job = await rest.job(job_id)
            if job.get("state") in TERMINAL or asyncio.get_running_loop().time() > deadline:
                return job
            await asyncio.sleep(min(self.options.poll_interval, 0.5))

    # --- stopping jobs --------------------------------------------------------------------

    async def _watch(
        self,
        step: FlinkStep,
        ctx: StepContext,
        rest: FlinkRest,
        jobs: list[str],
        work_dir: Path,
        restore: RestorePoint | None,
    ) -> StepResult:
        """A streaming step runs while its job does (see steps/flink_stream.py)."""
        if len(jobs) != 1:
            await self._stop_jobs(step, ctx, rest, jobs, work_dir)
            raise StepError(
                f"a streaming step runs one job, this one started {len(jobs)}: put its INSERT "
                "statements in one EXECUTE STATEMENT SET BEGIN ... END",
                error_type="FlinkUserError",
                retryable=False,
            )
        [job_id] = jobs
        until = None if step.until is None else until_left(step.until, ctx.step_started_at)
        if until is not None and ctx.attempt > 1:
            _note(work_dir, f"until: {until:.0f}s left of {step.until} since the step started")
        state, latest = await watch_job(
            rest, job_id, ctx, work_dir, until=until, poll=self.options.poll_interval
        )
        outputs: dict[str, Any] = {"job_ids": jobs, "mode": step.mode, "state": state}
        if restore is not None:
            outputs["restored_from"] = restore.path
        if latest is not None:
            outputs["checkpoint"] = latest.path
        if state == UNTIL:
            outputs["savepoint"] = await self._stop_job(step, ctx, rest, job_id, work_dir)
            outputs["state"] = "STOPPED"
        elif state == "FAILED":
            error = await self._failure(rest, jobs, work_dir / LOG_NAME, None, "failed")
            # No checkpoint of its own yet: the point it started from is still the newest.
            resume = latest or restore
            then = f"from {resume.describe()}" if resume else "without state (no checkpoint yet)"
            raise StepError(
                f"{error.message}\n(a retry restarts the job {then})",
                error_type=error.error_type,
                retryable=error.retryable,
            )
        elif state == "CANCELED":
            raise StepError(
                f"Flink job {job_id} was cancelled on the cluster, not by Laminar",
                error_type="FlinkJobCancelled",
                retryable=False,
            )
        elif state != "FINISHED":
            raise StepError(f"Flink job {job_id} is {state}", error_type="FlinkJobFailed")
        return StepResult(outputs=outputs, log_path=str(work_dir / LOG_NAME))

    # --- stopping jobs --------------------------------------------------------------------

    async def _stop_jobs(
        self, step: FlinkStep, ctx: StepContext, rest: FlinkRest, jobs: list[str], work_dir: Path
    ) -> None:
        for job_id in jobs:
            with contextlib.suppress(FlinkRestError, OSError):
                if (await rest.job(job_id))["state"] not in TERMINAL:
                    await self._stop_job(step, ctx, rest, job_id, work_dir)

    async def _stop_job(
        self, step: FlinkStep, ctx: StepContext, rest: FlinkRest, job_id: str, work_dir: Path
    ) -> str | None:
        """A streaming job with a `savepoint_path` stops with a savepoint there, recorded for
        the next start; any other job (or a savepoint that fails) is cancelled. The savepoint
        is waited for only as long as the attempt has left (`savepoint_wait`)."""
        wait = savepoint_wait(self.options.savepoint_timeout, ctx.attempt_deadline)
        if step.mode == "streaming" and step.savepoint_path and wait < MIN_SAVEPOINT_WAIT:
            _note(work_dir, f"no time left for a savepoint of job {job_id} ({wait:.1f}s): cancel")
        elif step.mode == "streaming" and step.savepoint_path:
            try:
                target = flink_uri(step.savepoint_path)
                request = await rest.stop_with_savepoint(job_id, target)
                location = await rest.savepoint_location(job_id, request, wait)
            except (FlinkRestError, OSError) as exc:
                _note(work_dir, f"stopping job {job_id} with a savepoint failed ({exc}): cancel")
            else:
                point = RestorePoint(location, "savepoint", time.time() * 1000, job_id)
                record_point(work_dir, point)
                _note(work_dir, f"stopped job {job_id} with a savepoint at {location}")
                # The job ends just after its savepoint.
                left = savepoint_wait(self.options.savepoint_timeout, ctx.attempt_deadline)
                await self._terminal(rest, job_id, wait=max(min(15.0, left), 0.0))
                return location
        await rest.cancel(job_id)
        return None

    async def _stop_earlier_attempts(
        self, rest: FlinkRest, tag: str, work_dir: Path, adopt: bool
    ) -> tuple[list[str], str | None]:
        """Stop what earlier attempts of this step left running: their drivers, and their
        jobs, except a streaming step's one running job, which this attempt follows on
        (`adopt`). Returns the earlier jobs (newest last) and the one adopted."""
        groups = tagged_groups(f"laminar-tag={tag}")
        await asyncio.gather(*(terminate_group(g, self.options.terminate_grace) for g in groups))
        recorded = _recorded(work_dir)
        name = job_name(tag)
        earlier = [
            job
            for job in sorted(await rest.jobs(), key=lambda j: j.get("start-time", 0))
            if job["jid"] in recorded or str(job.get("name", "")).startswith(name)
        ]
        stale = [job["jid"] for job in earlier if job.get("state") not in TERMINAL]
        adopted = stale.pop() if adopt and len(stale) == 1 else None
        if stale or groups:
            _note(work_dir, f"stopping an earlier attempt: jobs {stale}, drivers {sorted(groups)}")
        for job_id in stale:
            with contextlib.suppress(FlinkRestError):
                await rest.cancel(job_id)
        (work_dir / JOBS_NAME).unlink(missing_ok=True)
        return [job["jid"] for job in earlier], adopted


STOP_MARGIN = 3.0
"""Seconds kept back from the attempt's deadline for cancelling a job whose savepoint did not
complete in time (and for the activity to report)."""
MIN_SAVEPOINT_WAIT = 1.0


def savepoint_wait(limit: float, deadline: datetime | None) -> float:
    """How long stopping a job may wait for its savepoint: `limit`, but no longer than the
    attempt has left before Temporal stops waiting for it (a step timeout leaves the workflow's
    stop grace, 10 s), less STOP_MARGIN to cancel the job if the savepoint is late."""
    if deadline is None:
        return limit
    left = (deadline - datetime.now(UTC)).total_seconds() - STOP_MARGIN
    return max(min(limit, left), 0.0)


def until_left(until: timedelta, step_started_at: datetime | None) -> float:
    """Seconds of a streaming step's `until` left: it counts from the step's first attempt
    (from the workflow), so a retry does not run the job for another full `until`."""
    if step_started_at is None:
        return until.total_seconds()
    elapsed = (datetime.now(UTC) - step_started_at).total_seconds()
    return max(until.total_seconds() - max(elapsed, 0.0), 0.0)


def _note(work_dir: Path, text: str) -> None:
    """A line of Laminar's own in the step log (and the worker's log)."""
    log.info("flink step: %s", text)
    with (work_dir / LOG_NAME).open("a") as f:
        f.write(f"laminar: {text}\n")


def _note_restart(ctx: StepContext, work_dir: Path, restore: RestorePoint | None) -> None:
    if restore is not None:
        _note(work_dir, f"attempt {ctx.attempt}: starting from {restore.describe()}")
        log.warning("flink step %s restarts from %s", ctx.step_id, restore.describe())
    elif ctx.attempt > 1:
        _note(work_dir, f"attempt {ctx.attempt}: no checkpoint or savepoint, starting afresh")


def _record(jobs: list[str], job_id: str, work_dir: Path) -> None:
    if job_id not in jobs:
        jobs.append(job_id)
        with (work_dir / JOBS_NAME).open("a") as f:
            f.write(job_id + "\n")


def _recorded(work_dir: Path) -> list[str]:
    path = work_dir / JOBS_NAME
    return path.read_text().split() if path.exists() else []
