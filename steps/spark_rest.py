"""Progress of a running Spark application from its driver's REST API (`/api/v1`, on the UI
port). A local driver opens its UI on a free loopback port and logs which; cluster-mode
drivers run in a pod this worker cannot reach, and there the log's progress is used alone.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

UI_STARTED = re.compile(r"Successfully started service 'SparkUI' on port (\d+)")


def ui_port(line: str) -> int | None:
    """The UI port, from the line a driver logs when it opened it."""
    match = UI_STARTED.search(line)
    return int(match[1]) if match else None


def rest_progress(jobs: list[dict[str, Any]], stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Heartbeat details from `/jobs` and `/stages`: jobs and stages finished of those known
    so far (skipped stages left out: they never run), and the newest running stage's tasks."""
    done_jobs = sum(1 for job in jobs if job.get("status") == "SUCCEEDED")
    # One entry per stage attempt: the newest attempt of each stage counts.
    newest: dict[int, dict[str, Any]] = {}
    for stage in stages:
        current = newest.get(stage["stageId"])
        if current is None or stage.get("attemptId", 0) >= current.get("attemptId", 0):
            newest[stage["stageId"]] = stage
    counted = [s for s in newest.values() if s.get("status") != "SKIPPED"]
    done_stages = sum(1 for s in counted if s.get("status") == "COMPLETE")
    details: dict[str, Any] = {
        "jobs": f"{done_jobs}/{len(jobs)}",
        "stages": f"{done_stages}/{len(counted)}",
        "source": "spark-rest",
    }
    active = sorted((s for s in counted if s.get("status") == "ACTIVE"), key=lambda s: s["stageId"])
    if active:
        stage = active[-1]
        details["running_stage"] = stage["stageId"]
        details["tasks"] = f"{stage.get('numCompleteTasks', 0)}/{stage.get('numTasks', 0)}"
    failed = sum(s.get("numFailedTasks", 0) for s in counted)
    if failed:
        details["failed_tasks"] = failed
    return details


class SparkUiClient:
    """Reads one driver's REST API; `progress()` is None while it does not answer."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> None:
        self._client = httpx.AsyncClient(base_url=f"http://{host}:{port}/api/v1", timeout=timeout)
        self._app: str | None = None

    async def close(self) -> None:
        await self._client.aclose()

    async def progress(self) -> dict[str, Any] | None:
        try:
            if self._app is None:
                apps = (await self._client.get("/applications")).raise_for_status().json()
                if not apps:
                    return None
                self._app = str(apps[0]["id"])
            base = f"/applications/{self._app}"
            jobs = (await self._client.get(f"{base}/jobs")).raise_for_status().json()
            stages = (await self._client.get(f"{base}/stages")).raise_for_status().json()
        except (httpx.HTTPError, ValueError, KeyError, IndexError):
            return None  # not up yet, or gone: the driver is starting or stopping
        return rest_progress(jobs, stages)
