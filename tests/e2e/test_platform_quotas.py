"""A tenant's run queue across restarts: 20 triggers with a concurrency quota of 3 through a
real `laminar server` and `laminar worker` over PostgreSQL; both processes are stopped and
started again while runs wait; never more than 3 RUNNING (sampled), and all 20 finish."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pipeline_service.db.models import Run
from pipeline_service.db.session import make_engine
from pipeline_service.temporal.dev_server import DevServer
from tests.e2e.conftest import E2E_ADMIN_KEY, EXAMPLES, Cli, running_platform, wait_for

HOLD = """\
name: hold
steps:
  - id: hold
    type: python
    script: scripts/pause.py
    args: ["1.0"]
"""

pytestmark = pytest.mark.slow


class Sampler:
    """Counts RUNNING runs in the database every 50 ms, in a thread, whatever the processes
    are doing."""

    def __init__(self, database_url: str) -> None:
        self.engine = make_engine(database_url)
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.engine.connect() as conn:
                running = conn.scalar(
                    select(func.count()).select_from(Run).where(Run.status == "RUNNING")
                )
            self.samples.append(int(running or 0))
            time.sleep(0.05)

    def statuses(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(select(Run.status).order_by(Run.id)))

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.engine.dispose()


def test_the_queue_survives_restarts_of_server_and_worker(
    cli: Cli, dev_server: DevServer, tmp_path: Path
) -> None:
    source = {"LAMINAR_SOURCE_DIR": str(EXAMPLES)}
    with (
        running_platform(cli, dev_server.address, tmp_path, ("w1",), source) as platform,
        Sampler(platform.env["LAMINAR_DATABASE_URL"]) as sampler,
        platform.http() as http,
    ):
        assert http.post("/v1/pipelines", json={"source": HOLD}).is_success
        admin = {"Authorization": f"Bearer {E2E_ADMIN_KEY}"}
        quota = http.put("/v1/tenants/acme/quota", json={"max_concurrent_runs": 3}, headers=admin)
        assert quota.status_code == 200, quota.text
        for _ in range(20):
            response = http.post("/v1/pipelines/hold/runs", json={})
            assert response.status_code == 201, response.text
        worker = platform.workers["w1"]
        wait_for(
            lambda: sampler.statuses().count("SUCCEEDED") >= 4,
            60,
            f"the first runs; worker said:\n{worker.output()}",
        )
        platform.stop("w1")
        for proc in (platform.server, worker):
            assert "Traceback" not in proc.output(), proc.output()
        down = sampler.statuses()
        assert down.count("QUEUED") > 0, down  # runs waited while nothing ran
        time.sleep(1)
        platform.start_server()
        worker = platform.start_worker("w1")
        platform.wait_ready()
        wait_for(
            lambda: all(s in ("SUCCEEDED", "FAILED", "CANCELLED") for s in sampler.statuses()),
            120,
            f"all 20 runs; worker said:\n{worker.output()}",
        )
        assert sampler.statuses() == ["SUCCEEDED"] * 20
        assert max(sampler.samples) == 3, sampler.samples
        platform.stop("w1")
