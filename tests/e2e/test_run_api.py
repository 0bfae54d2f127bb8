"""`laminar run --http-port`: the pipeline cluster serves the service API (same endpoints,
health checks and metrics as the platform) for the default tenant, and its run is recorded."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from pathlib import Path

import httpx
from temporalio.client import Client

from pipeline_service.temporal.dev_server import free_port
from tests.e2e.conftest import EXAMPLES, Cli, api_up, wait_for


def test_laminar_run_serves_the_api_and_records_its_run(cli: Cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    http_port, metrics_port = free_port(), free_port()
    proc = cli.start(
        "run", EXAMPLES / "sales_report.yaml", "--no-ui", "--state-dir", state,
        "--http-port", str(http_port), "--metrics-port", str(metrics_port),
    )  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"

    wait_for(api_up(base), 60, f"the embedded API; laminar said:\n{proc.output()}")
    assert f"{base}/docs" in proc.output()
    key = (state / "api-key").read_text().strip()
    assert (state / "api-key").stat().st_mode & 0o077 == 0
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
        deadline = time.monotonic() + 90
        while True:
            runs = http.get("/v1/runs").json()["items"]
            if runs and runs[0]["status"] in ("SUCCEEDED", "FAILED"):
                break
            assert time.monotonic() < deadline, (runs, proc.output())
            time.sleep(0.3)
        run = http.get(f"/v1/runs/{runs[0]['id']}").json()
        assert run["status"] == "SUCCEEDED", run
        assert run["pipeline"] == "sales-report" and run["actor"] == "laminar-run"
        assert all(s["status"] == "SUCCEEDED" and s["attempts"] for s in run["steps"])
        assert http.get("/v1/pipelines/sales-report").json()["current_version"] == 1
        assert http.get("/v1/runs", headers={"Authorization": "Bearer nope"}).status_code == 401
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'laminar_runs{status="SUCCEEDED",tenant="default"} 1.0' in metrics
    assert 'laminar_step_duration_seconds_count{status="SUCCEEDED",type="sql"}' in metrics
    assert 'laminar_runs_finished_total{status="SUCCEEDED",tenant="default"} 1.0' in metrics
    proc.proc.send_signal(signal.SIGINT)
    result = proc.wait(30)
    assert result.code == 0, result.details


def test_a_run_terminated_in_temporal_is_recorded_failed_by_laminar_run(
    cli: Cli, tmp_path: Path
) -> None:
    """Terminate from the Temporal UI/CLI: the workflow cannot record its own end, so the
    reconciler that every `laminar worker` runs records it, here inside `laminar run`."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "wait.py").write_text("import time\ntime.sleep(300)\n")
    (tmp_path / "long.yaml").write_text(
        "name: long\nsteps:\n  - id: wait\n    type: python\n    script: scripts/wait.py\n"
    )
    http_port = free_port()
    proc = cli.start(
        "run", tmp_path / "long.yaml", "--no-ui", "--state-dir", tmp_path / "state",
        "--http-port", str(http_port),
    )  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"

    def running() -> bool:
        with contextlib.suppress(httpx.HTTPError, KeyError, IndexError, OSError):
            key = (tmp_path / "state" / "api-key").read_text().strip()
            runs = httpx.get(f"{base}/v1/runs", headers={"Authorization": f"Bearer {key}"})
            return bool(runs.json()["items"][0]["status"] == "RUNNING")
        return False

    wait_for(running, 90, f"the run to start; laminar said:\n{proc.output()}")
    auth = {"Authorization": f"Bearer {(tmp_path / 'state' / 'api-key').read_text().strip()}"}
    run = httpx.get(f"{base}/v1/runs", headers=auth).json()["items"][0]
    address = re.search(r"temporal\s+(\S+:\d+)", proc.output())
    assert address, proc.output()

    async def terminate() -> None:
        client = await Client.connect(address.group(1))
        await client.get_workflow_handle(run["workflow_id"]).terminate(reason="wrong params")

    asyncio.run(terminate())

    def recorded() -> bool:
        answer = httpx.get(f"{base}/v1/runs/{run['id']}", headers=auth).json()
        return bool(answer["status"] != "RUNNING")

    wait_for(recorded, 30, f"the end to be recorded; laminar said:\n{proc.output()}")
    answer = httpx.get(f"{base}/v1/runs/{run['id']}", headers=auth).json()
    assert answer["status"] == "FAILED", answer
    assert "terminated in Temporal" in answer["error"] and "wrong params" in answer["error"]
    assert answer["steps"][0]["attempts"][-1]["status"] == "CANCELLED", answer
    proc.proc.send_signal(signal.SIGINT)
    result = proc.wait(30)
    assert result.code == 1, result.details
