"""Two `laminar worker` processes on one task queue, each started in an empty directory of its
own, run a pipeline applied from a directory (`laminar pipelines apply DIR`: a script and a
SQL file travel as the version's code bundle). The worker running the middle step is killed
with SIGKILL mid-step: the step finishes on the other worker, the run SUCCEEDS, and no step
that succeeded runs twice."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pipeline_service.temporal.dev_server import DevServer
from tests.e2e.conftest import Cli, pid_gone, running_platform, wait_for

pytestmark = pytest.mark.slow

REPORT = """\
import duckdb, json, os, sys, time
from pathlib import Path

step, pause = sys.argv[1], float(sys.argv[2])
with open(os.environ["LEDGER"], "a") as ledger:  # one line per execution of a step
    ledger.write(f"{step} {os.environ['LAMINAR_OUTPUT_DIR']}\\n")
sql = (Path(__file__).parent.parent / "queries" / "total.sql").read_text()
total = duckdb.connect().execute(sql).fetchall()[0][0]
time.sleep(pause)
Path(os.environ["LAMINAR_RESULT"]).write_text(json.dumps({"total": total}))
"""
TOTAL_SQL = "SELECT sum(x) FROM range(1, 11) t(x)\n"


def pipeline_yaml(ledger: Path) -> str:
    """first -> middle (6 s: killed here) -> last (takes middle's total as its pause's
    digits, so the value crosses workers through the run's outputs)."""
    step = """\
  - id: {id}
    type: python
    script: scripts/report.py
    args: ["{id}", "{pause}"]
    env: {{LEDGER: "{ledger}"}}
    heartbeat_timeout: 3s
    retry: {{max_attempts: 2, initial_interval: 0.2}}
"""
    return (
        "name: spread\nsteps:\n"
        + step.format(id="first", pause="0.5", ledger=ledger)
        + step.format(id="middle", pause="6", ledger=ledger)
        + "    depends_on: [first]\n"
        + step.format(id="last", pause="0.{{ steps.middle.result.total }}", ledger=ledger)
        + "    depends_on: [middle]\n"
    )


def test_two_workers_share_a_run_and_survive_a_kill(
    cli: Cli, dev_server: DevServer, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    (project / "queries").mkdir()
    (project / "scripts" / "report.py").write_text(REPORT)
    (project / "queries" / "total.sql").write_text(TOTAL_SQL)
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    (project / "pipeline.yaml").write_text(pipeline_yaml(ledger))
    with running_platform(cli, dev_server.address, tmp_path) as platform:
        workers = platform.workers  # in empty directories: they have never seen the files
        applied = cli.run("pipelines", "apply", project, env=platform.client_env)
        assert applied.code == 0 and "2 files bundled" in applied.stdout, applied.details
        with platform.http() as http:
            run = http.post("/v1/pipelines/spread/runs", json={}).json()
            assert "id" in run, run

            def middle_running_on() -> str | None:
                for line in ledger.read_text().splitlines():
                    step, where = line.split(" ", 1)
                    if step == "middle":
                        return next(n for n in workers if str(tmp_path / n) in where)
                return None

            def middle_started() -> bool:
                status = http.get(f"/v1/runs/{run['id']}").json()
                assert status["status"] not in ("FAILED", "CANCELLED"), status
                return middle_running_on() is not None

            wait_for(middle_started, 60, "the middle step to start", interval=0.2)
            victim = middle_running_on()
            assert victim is not None
            time.sleep(1)  # well inside the 6 s step
            os.kill(workers[victim].pid, signal.SIGKILL)
            wait_for(lambda: pid_gone(workers[victim].pid), 10, "the killed worker to go")
            deadline = time.monotonic() + 120
            while run["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
                assert time.monotonic() < deadline, run
                time.sleep(0.5)
                run = http.get(f"/v1/runs/{run['id']}").json()
        survivor = next(n for n in workers if n != victim)
        assert run["status"] == "SUCCEEDED", (run, workers[survivor].output())
        steps = {s["step_id"]: s for s in run["steps"]}
        assert steps["last"]["attempts"][-1]["outputs"] == {"total": 55}
        executions = [line.split(" ", 1) for line in ledger.read_text().splitlines()]
        # In the order the executions happened (the ledger's), not the workers' names.
        ran = {step: [n for s, w in executions for n in workers if s == step and f"/{n}/" in w]
               for step in ("first", "middle", "last")}  # fmt: skip
        # Succeeded steps ran once; the killed attempt ran again, on the other worker.
        assert len(ran["first"]) == 1 and len(ran["last"]) == 1, executions
        assert ran["middle"] == [victim, survivor], executions
        assert ran["last"] == [survivor]
        assert len({*ran["first"], *ran["middle"], *ran["last"]}) == 2  # both took work
        assert [a["status"] for a in steps["first"]["attempts"]] == ["SUCCEEDED"]
        for name in ("w1", "w2"):  # nothing of the pipeline in the workers' directories
            assert not list((tmp_path / name).glob("*.py"))
        platform.stop(survivor)
