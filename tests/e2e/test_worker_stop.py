"""A graceful stop writes what the worker's attempt recorder still holds. A step that ends in
the shutdown grace of `laminar worker` (SIGTERM) or of `laminar run` (SIGTERM) queues its
attempt's end for the recorder's next background write; the stopping process writes it before
it exits, so the database shows the step's end although no workflow recorded anything after
the stop (no worker is left to run the workflow's next task: the run itself still shows
RUNNING). With the database gone, the stop gives up on those events after a few seconds."""

from __future__ import annotations

import re
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from pipeline_service.db.session import make_engine
from pipeline_service.temporal.dev_server import DevServer, free_port
from tests.conftest import POSTGRES_URL
from tests.e2e.conftest import Cli, Platform, api_up, running_platform, wait_for

pytestmark = pytest.mark.slow

HOLD = """\
import os, sys, time
from pathlib import Path
Path(sys.argv[1]).touch()  # started
time.sleep(float(sys.argv[2]))
"""


def write_project(tmp_path: Path, pause: float) -> tuple[Path, Path]:
    """`hold` (says it started, then takes `pause` seconds) -> `after`: the project and the
    marker `hold` touches when it starts."""
    project, marker = tmp_path / "project", tmp_path / "hold-started"
    project.mkdir()
    (project / "hold.py").write_text(HOLD)
    (project / "pipeline.yaml").write_text(
        "name: held\nsteps:\n"
        f'  - id: hold\n    type: python\n    script: hold.py\n    args: ["{marker}", "{pause}"]\n'
        "  - id: after\n    type: noop\n    depends_on: [hold]\n"
    )
    return project, marker


def steps_of(run: dict[str, Any]) -> dict[str, list[str]]:
    return {s["step_id"]: [a["status"] for a in s["attempts"]] for s in run["steps"]}


def hold_running(http: httpx.Client, run_id: str) -> bool:
    """The attempt's start is in the database (the recorder's background write)."""
    return steps_of(http.get(f"/v1/runs/{run_id}").json()).get("hold") == ["RUNNING"]


def start_held(
    cli: Cli, platform: Platform, http: httpx.Client, project: Path, marker: Path
) -> str:
    """Apply the project and trigger it: the run's id, once `hold` runs and the recorder has
    written its attempt's start."""
    assert cli.run("pipelines", "apply", project, env=platform.client_env).code == 0
    run_id: str = http.post("/v1/pipelines/held/runs", json={}).json()["id"]
    wait_for(marker.exists, 60, "the hold step to start")
    wait_for(lambda: hold_running(http, run_id), 30, "the attempt's start recorded")
    return run_id


def test_a_worker_stopped_with_sigterm_writes_the_attempts_that_ended_in_its_grace(
    cli: Cli, dev_server: DevServer, tmp_path: Path
) -> None:
    project, marker = write_project(tmp_path, pause=3)
    with running_platform(cli, dev_server.address, tmp_path, ("w1",)) as platform:
        with platform.http() as http:
            run_id = start_held(cli, platform, http, project, marker)
            # Stopped mid-step: the step finishes within the worker's shutdown grace (10 s).
            stopped = platform.stop_worker("w1", signal.SIGTERM)
            assert stopped.code == 0 and "Traceback" not in stopped.output, stopped.details
            run = http.get(f"/v1/runs/{run_id}").json()
        # The attempt's end, written by the stopping worker; the workflow recorded nothing
        # since (its next task waits for a worker): the run still runs, `after` never started.
        assert steps_of(run) == {"hold": ["SUCCEEDED"], "after": []}, run
        assert run["status"] == "RUNNING", run
        [attempt] = run["steps"][0]["attempts"]
        assert attempt["finished_at"] is not None and attempt["duration_ms"] >= 2000, attempt
        platform.stop()


def test_a_worker_whose_database_is_gone_still_stops_promptly(
    cli: Cli, dev_server: DevServer, tmp_path: Path
) -> None:
    """The database dropped under a running step: the step ends in the shutdown grace, the
    stopping worker cannot write its end and gives up after a few seconds, saying so."""
    project, marker = write_project(tmp_path, pause=2)
    with running_platform(cli, dev_server.address, tmp_path, ("w1",)) as platform:
        with platform.http() as http:
            start_held(cli, platform, http, project, marker)
        database = make_url(platform.env["LAMINAR_DATABASE_URL"]).database
        admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE "{database}" WITH (FORCE)')
        finally:
            admin.dispose()
        started = time.monotonic()
        stopped = platform.stop_worker("w1", signal.SIGTERM, timeout=60)
        elapsed = time.monotonic() - started
        # 2 s of step, 5 s of flush attempts and the rest of the stop (seen: 17 s), not a hang.
        assert elapsed < 45, stopped.details
        assert "1 step attempt event(s) not written" in stopped.output, stopped.details
        # The recorder's warnings reach the operator: timestamped lines on stderr.
        stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*Z \[warning\s*\] "
        for message in ("attempt recorder: write failed; retrying", "events left unwritten"):
            assert re.search(stamp + ".*" + re.escape(message), stopped.stderr, re.M), (
                stopped.details
            )
        platform.stop()


def test_laminar_run_stopped_with_sigterm_writes_the_attempts_that_ended_in_its_grace(
    cli: Cli, tmp_path: Path
) -> None:
    """(Without the flush at stop this passes too, as a rule: the embedded API's shutdown
    that follows the worker's takes longer than the recorder's 50 ms interval. The flush makes
    it certain; the `laminar worker` test above fails without it.)"""
    project, marker = write_project(tmp_path, pause=2.5)
    state, port = tmp_path / "state", free_port()
    running = cli.start(
        "run", project / "pipeline.yaml", "--no-ui", "--state-dir", state,
        "--http-port", str(port),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_for(api_up(base), 60, f"the embedded API; laminar said:\n{running.output()}")
    key = (state / "api-key").read_text().strip()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as http:
        wait_for(marker.exists, 60, "the hold step to start")
        run_id = http.get("/v1/runs").json()["items"][0]["id"]
        wait_for(lambda: hold_running(http, run_id), 30, "the attempt's start recorded")
    # Stopped mid-step: the step finishes within the shutdown grace (5 s).
    running.proc.send_signal(signal.SIGTERM)
    stopped = running.wait(30)
    assert stopped.code == 143 and "Traceback" not in stopped.output, stopped.details
    with sqlite3.connect(state / "laminar.db") as db:
        rows = db.execute(
            "SELECT step_id, attempt, status, finished_at IS NOT NULL FROM step_runs"
        ).fetchall()
        [run_status] = db.execute("SELECT status FROM runs").fetchone()
    assert rows == [("hold", 1, "SUCCEEDED", 1)], rows
    assert run_status == "RUNNING"  # the workflow recorded nothing after the stop
