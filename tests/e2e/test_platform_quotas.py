"""A tenant's run queue across restarts: 20 triggers with a concurrency quota of 3 through a
real `laminar server` and `laminar worker` over PostgreSQL; both processes are stopped and
started again while runs wait; never more than 3 RUNNING (sampled), and all 20 finish."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from pipeline_service.db.models import Run
from pipeline_service.db.session import make_engine
from pipeline_service.temporal.dev_server import DevServer, free_port
from tests.conftest import scratch_postgres_database
from tests.e2e.conftest import EXAMPLES, Background, Cli, api_up, wait_for

ADMIN = "e2e-admin-key"
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
    port = free_port()
    with scratch_postgres_database() as database_url:
        env = {
            "LAMINAR_DATABASE_URL": database_url,
            "LAMINAR_TEMPORAL_ADDRESS": dev_server.address,
            "LAMINAR_ADMIN_API_KEY": ADMIN,
            "LAMINAR_HTTP_PORT": str(port),
            "LAMINAR_WORK_DIR": str(tmp_path / "work"),
            "LAMINAR_TASK_QUEUE": f"e2e-quota-{port}",
            "LAMINAR_SOURCE_DIR": str(EXAMPLES),
        }
        upgraded = cli.run("db", "upgrade", env=env)
        assert upgraded.code == 0, upgraded.details
        base = f"http://127.0.0.1:{port}"

        def start() -> tuple[Background, Background]:
            server, worker = cli.start("server", env=env), cli.start("worker", env=env)

            wait_for(api_up(base), 60, f"the API; server said:\n{server.output()}")
            return server, worker

        server, worker = start()
        admin = {"Authorization": f"Bearer {ADMIN}"}
        with Sampler(database_url) as sampler, httpx.Client(base_url=base, timeout=30) as http:
            assert http.post("/v1/tenants", json={"name": "acme"}, headers=admin).status_code == 201
            key = http.post(
                "/v1/tenants/acme/keys", json={"name": "ci", "scope": "operate"}, headers=admin
            ).json()["key"]
            auth = {"Authorization": f"Bearer {key}"}
            assert http.post("/v1/pipelines", json={"source": HOLD}, headers=auth).is_success
            quota = http.put(
                "/v1/tenants/acme/quota", json={"max_concurrent_runs": 3}, headers=admin
            )
            assert quota.status_code == 200, quota.text
            for _ in range(20):
                response = http.post("/v1/pipelines/hold/runs", json={}, headers=auth)
                assert response.status_code == 201, response.text
            wait_for(
                lambda: sampler.statuses().count("SUCCEEDED") >= 4,
                60,
                f"the first runs; worker said:\n{worker.output()}",
            )
            for proc in (server, worker):
                proc.proc.send_signal(signal.SIGTERM)
                result = proc.wait(30)
                assert "Traceback" not in result.output, result.output
            down = sampler.statuses()
            assert down.count("QUEUED") > 0, down  # runs waited while nothing ran
            time.sleep(1)
            server, worker = start()
            wait_for(
                lambda: all(s in ("SUCCEEDED", "FAILED", "CANCELLED") for s in sampler.statuses()),
                120,
                f"all 20 runs; worker said:\n{worker.output()}",
            )
            assert sampler.statuses() == ["SUCCEEDED"] * 20
            assert max(sampler.samples) == 3, sampler.samples
        for proc in (server, worker):
            proc.proc.send_signal(signal.SIGTERM)
            proc.wait(30)
