"""Python script steps: a subprocess confined to the pipeline directory and a minimal environment.

The script gets its own process group, so on cancellation (timeout, run cancel, shutdown) the
whole tree it started is terminated: SIGTERM, a grace period, then SIGKILL. The parent's
environment is never passed through; only PATH, locale, and what the step declares.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO

from schemas.pipeline import PythonStep
from schemas.templating import render_text
from steps.base import StepContext, StepError, StepResult, confined_path
from steps.engines.duckdb import DuckDBEngine
from steps.process import group_alive, spawn_group, terminate_group
from steps.python_env import default_environments, ensure_environment

LOG_NAME = "step.log"
CONTEXT_NAME = "laminar_context.json"
RESULT_NAME = "laminar_result.json"
INPUTS_DIR = "inputs"
TERMINATE_GRACE_SECONDS = 3.0
"""A stopped script (timeout, cancel) gets SIGTERM, then SIGKILL this long after."""
MAX_RESULT_BYTES = 256 * 1024  # results travel in Temporal payloads: references, not data
_LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 64 * 1024
_PASSED_THROUGH = ("LANG", "LC_ALL")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


def resolve_script(source_dir: Path, script: str) -> Path:
    """The script's real path; refuses anything that resolves outside `source_dir`."""
    return confined_path(source_dir, script, "script")


class PythonScriptExecutor:
    """Runs `step.script` with the interpreter `python_executable` in the step's work dir."""

    def __init__(
        self,
        engine: DuckDBEngine,
        python_executable: str = sys.executable,
        *,
        terminate_grace: float = TERMINATE_GRACE_SECONDS,
        environments: Path | None = None,
    ) -> None:
        self.engine = engine
        self.python_executable = python_executable
        self.terminate_grace = terminate_grace
        # Where steps with `requirements:` get their virtualenvs (built once, then reused).
        self.environments = environments or default_environments()

    async def execute(self, step: PythonStep, ctx: StepContext) -> StepResult:
        script = resolve_script(ctx.source_dir, step.script)
        work_dir = ctx.work_dir.resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        args = [render_text(arg, ctx.run, ctx.upstream) for arg in step.args]
        declared_env = {name: ctx.env_value(value) for name, value in step.env.items()}

        inputs = await self._export_inputs(step, work_dir)
        outputs = {table: work_dir / file for table, file in step.outputs.items()}
        for path in outputs.values():
            path.unlink(missing_ok=True)  # a file left by an earlier attempt is stale
        context_path = work_dir / CONTEXT_NAME
        document = _context_document(ctx, inputs, {t: str(p) for t, p in outputs.items()})
        context_path.write_text(json.dumps(document, indent=2) + "\n")
        result_path = work_dir / RESULT_NAME
        result_path.unlink(missing_ok=True)  # a result left by an earlier attempt is stale

        env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
        env.update(PATH=os.environ.get("PATH", os.defpath), HOME=str(work_dir))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(declared_env)
        env.update(
            LAMINAR_CONTEXT=str(context_path),
            LAMINAR_RESULT=str(result_path),
            LAMINAR_OUTPUT_DIR=str(work_dir),
        )

        python = self.python_executable
        if step.requirements:
            built = await asyncio.to_thread(
                ensure_environment, step.requirements, self.environments
            )
            python = str(built)
        log_path = work_dir / LOG_NAME
        with log_path.open("ab") as log:
            log.write(f"--- attempt {ctx.attempt} ---\n".encode())
            log.flush()
            attempt_start = log.tell()
            returncode = await self._run([python, str(script), *args], work_dir, env, log)
        if ctx.secrets:
            _redact_log(log_path, attempt_start, ctx)
        if returncode != 0:
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with code {returncode}"
            )
            tail = _log_tail(log_path, attempt_start)
            last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
            raise StepError(
                f"script {step.script} {how}: {last}\nlast lines of {log_path}:\n{tail}"
                if last
                else f"script {step.script} {how} (no output; log: {log_path})",
                error_type="ScriptFailed",
                retryable=True,
            )
        result = _read_result(result_path)
        tables = await self._load_outputs(outputs, work_dir)
        return StepResult(outputs=result, tables=tables, log_path=str(log_path))

    async def _load_outputs(self, outputs: dict[str, Path], work_dir: Path) -> dict[str, str]:
        """Load the files the script wrote into the warehouse: all tables or none."""
        if not outputs:
            return {}
        for table, path in outputs.items():
            if not path.resolve().is_relative_to(work_dir):
                raise StepError(
                    f"output {table!r}: {path} resolves outside the step's directory",
                    error_type="OutputError",
                    retryable=False,
                )
            if not path.is_file():
                raise StepError(
                    f"output {table!r}: the script did not write {path.name} in {work_dir}",
                    error_type="OutputError",
                    retryable=False,
                )
        try:
            await self.engine.run_load(outputs)
        except StepError as err:
            raise StepError(
                f"loading the outputs failed (no table was changed): {err.message}",
                error_type="OutputError",
                retryable=False,
            ) from err
        return {table: table for table in outputs}

    async def _export_inputs(self, step: PythonStep, work_dir: Path) -> dict[str, str]:
        if not step.inputs:
            return {}
        directory = work_dir / INPUTS_DIR
        directory.mkdir(exist_ok=True)
        paths: dict[str, str] = {}
        used: set[str] = set()
        for table in step.inputs:
            stem = _UNSAFE_FILE_CHARS.sub("_", table).lstrip(".") or "table"
            name, n = stem, 1
            while name in used:
                n += 1
                name = f"{stem}_{n}"
            used.add(name)
            path = directory / f"{name}.{step.input_format}"
            await self.engine.run_export(table, path, step.input_format)
            paths[table] = str(path)
        return paths

    async def _run(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        log: BinaryIO,
    ) -> int:
        process = await spawn_group(argv, cwd=cwd, env=env, stdout=log)
        group = process.pid
        waiting = asyncio.ensure_future(process.wait())
        try:
            await asyncio.wait({waiting})
        except asyncio.CancelledError:
            await terminate_group(group, self.terminate_grace)
            await asyncio.wait({waiting}, timeout=1.0)  # let the leader be reaped
            raise
        if group_alive(group):
            # The script exited but left background processes: they never outlive the step.
            await terminate_group(group, self.terminate_grace)
        return waiting.result()


def _context_document(
    ctx: StepContext, inputs: dict[str, str], outputs: dict[str, str]
) -> dict[str, Any]:
    run = ctx.run.model_dump(mode="json")
    return {
        "tenant": run["tenant"],
        "run_id": run["run_id"],
        "pipeline": run["pipeline"],
        "step_id": ctx.step_id,
        "attempt": ctx.attempt,
        "idempotency_key": ctx.idempotency_key,
        "logical_date": run["logical_date"],
        "data_interval_start": run["data_interval_start"],
        "data_interval_end": run["data_interval_end"],
        "params": run["params"],
        "inputs": inputs,
        "outputs": outputs,
    }


def _read_result(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    if path.stat().st_size > MAX_RESULT_BYTES:
        raise StepError(
            f"{path} is larger than {MAX_RESULT_BYTES} bytes; write data to files and "
            "return their paths",
            error_type="InvalidResult",
            retryable=False,
        )
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StepError(
            f"{path} is not valid JSON: {exc}", error_type="InvalidResult", retryable=False
        ) from exc
    if not isinstance(data, dict):
        raise StepError(
            f"{path} must hold a JSON object, got {type(data).__name__}",
            error_type="InvalidResult",
            retryable=False,
        )
    return data


def _log_tail(path: Path, attempt_start: int) -> str:
    """The last lines this attempt wrote to the log."""
    with path.open("rb") as log:
        size = log.seek(0, os.SEEK_END)
        log.seek(max(attempt_start, size - _LOG_TAIL_BYTES))
        text = log.read().decode("utf-8", errors="replace")
    lines = text.splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(no output)"


def _redact_log(path: Path, start: int, ctx: StepContext) -> None:
    """Mask the secret values a script printed in this attempt's part of its log."""
    with path.open("r+b") as log:
        log.seek(start)
        text = log.read().decode(errors="replace")
        masked = ctx.redact(text)
        if masked != text:
            log.seek(start)
            log.truncate()
            log.write(masked.encode())
