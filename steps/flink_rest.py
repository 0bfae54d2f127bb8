"""The Flink JobManager REST API, as much as a step needs: follow, cancel, explain, run jars."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

TERMINAL = frozenset({"FINISHED", "FAILED", "CANCELED", "SUSPENDED"})
_MAX_HEADLINE = 500


class FlinkRestError(Exception):
    """The REST API answered with an error (its `errors` list joined)."""


class FlinkRest:
    """An async client for one cluster (`http://host:port`)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self._client = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout)

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._client.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                errors = response.json().get("errors", [])
            except ValueError:
                errors = [response.text]
            detail = "; ".join(str(e).strip().splitlines()[0] for e in errors if str(e).strip())
            raise FlinkRestError(f"{method} {path}: HTTP {response.status_code}: {detail}")
        return response.json() if response.content else {}

    async def jobs(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/jobs/overview")).get("jobs", []))

    async def job(self, job_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> None:
        await self._call("PATCH", f"/jobs/{job_id}", params={"mode": "cancel"})

    async def stop_with_savepoint(self, job_id: str, directory: str) -> str:
        body = {"targetDirectory": directory, "drain": False}
        return str((await self._call("POST", f"/jobs/{job_id}/stop", json=body))["request-id"])

    async def savepoint_location(self, job_id: str, request_id: str, wait: float) -> str:
        """Where a triggered savepoint (or stop-with-savepoint) went, once it completed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            info = await self._call("GET", f"/jobs/{job_id}/savepoints/{request_id}")
            if info.get("status", {}).get("id") == "COMPLETED":
                operation = info.get("operation") or {}
                if "location" in operation:
                    return str(operation["location"])
                cause = (operation.get("failure-cause") or {}).get("stack-trace", "")
                raise FlinkRestError(
                    f"savepoint of job {job_id} failed: {exception_headline(cause)}"
                )
            if loop.time() > deadline:
                raise FlinkRestError(f"savepoint of job {job_id} not done after {wait:g}s")
            await asyncio.sleep(0.2)

    async def checkpoints(self, job_id: str) -> dict[str, Any]:
        """The job's checkpoint statistics (`latest.completed`, `.savepoint`, `.restored`);
        empty when checkpointing is off."""
        try:
            return dict(await self._call("GET", f"/jobs/{job_id}/checkpoints"))
        except FlinkRestError:
            return {}  # "Checkpointing has not been enabled", or a job the cluster forgot

    async def root_exception(self, job_id: str) -> str | None:
        """The exception that failed the job: the newest entry of its exception history."""
        info = await self._call("GET", f"/jobs/{job_id}/exceptions")
        entries = (info.get("exceptionHistory") or {}).get("entries") or []
        text = entries[0].get("stacktrace") if entries else info.get("root-exception")
        return str(text) if text else None

    async def upload_jar(self, jar: Path) -> str:
        with jar.open("rb") as f:
            files = {"jarfile": (jar.name, f, "application/x-java-archive")}
            answer = await self._call("POST", "/jars/upload", files=files)
        return Path(answer["filename"]).name  # the jar id is the stored file's name

    async def run_jar(self, jar_id: str, body: dict[str, Any]) -> str:
        return str((await self._call("POST", f"/jars/{jar_id}/run", json=body))["jobid"])

    async def delete_jar(self, jar_id: str) -> None:
        await self._call("DELETE", f"/jars/{jar_id}")


def vertex_progress(job: dict[str, Any]) -> dict[str, Any]:
    """Heartbeat details of a job: its state and finished/total vertices and subtasks."""
    vertices = job.get("vertices", [])
    tasks_done = sum(v.get("tasks", {}).get("FINISHED", 0) for v in vertices)
    tasks_total = sum(v.get("parallelism", 0) for v in vertices)
    done = sum(1 for v in vertices if v.get("status") == "FINISHED")
    return {
        "job_id": job.get("jid"),
        "state": job.get("state"),
        "vertices": f"{done}/{len(vertices)}",
        "subtasks": f"{tasks_done}/{tasks_total}",
    }


def exception_headline(stacktrace: str) -> str:
    """The most specific `Caused by:` line of a Java stack trace (or its first line)."""
    lines = [line.strip() for line in stacktrace.splitlines() if line.strip()]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by:")]
    headline = causes[-1] if causes else (lines[0] if lines else stacktrace)
    return headline if len(headline) <= _MAX_HEADLINE else headline[: _MAX_HEADLINE - 3] + "..."
