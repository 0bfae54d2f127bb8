"""The embedded cluster is durable: the whole cluster (laminar and its Temporal server) killed
with SIGKILL at any point resumes its run, and the fast stop after a run (the server is
SIGKILLed instead of drained) loses nothing."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus

from pipeline_service.temporal.dev_server import start_dev_server
from schemas.run import RunStatus, RunSummary
from tests.e2e.conftest import Background, Cli, pid_gone, temporal_servers_under, wait_for
from tests.e2e.test_cli_run import (
    HELLO,
    assert_clean,
    lines,
    one_script_pipeline,
    run_id_and_ds,
    write_resume_pipeline,
)


def kill_9_whole_cluster(laminar: Background, state: Path) -> None:
    """A crash of everything at once: the Temporal server gets no chance to shut down (the
    parent-death signal would otherwise give it a SIGTERM and a graceful stop)."""
    server_pid = int((state / "temporal.db.pid").read_text())
    os.kill(server_pid, signal.SIGKILL)
    os.kill(laminar.pid, signal.SIGKILL)
    assert laminar.wait(10).code == -signal.SIGKILL
    wait_for(lambda: pid_gone(server_pid), 5, "the killed server to go")


@pytest.mark.slow
def test_kill_9_of_the_whole_cluster_during_a_retry_wait_then_resume(
    cli: Cli, tmp_path: Path
) -> None:
    """The step failed its first attempt and waits out its retry interval when the whole
    cluster (laminar and the server) is killed: the rerun finishes the run, the step runs
    exactly twice, and the second attempt still waits for the interval."""
    marker = tmp_path / "attempts"
    args = one_script_pipeline(
        tmp_path,
        "flaky",
        "import os, pathlib, sys, time\n"
        "path = pathlib.Path(os.environ['MARKER'])\n"
        "runs = path.read_text().splitlines() if path.exists() else []\n"
        "path.write_text(''.join(f'{r}\\n' for r in [*runs, repr(time.time())]))\n"
        "sys.exit(0 if runs else 1)  # the first attempt fails\n",
        f"    env: {{MARKER: '{marker}'}}\n    retry: {{max_attempts: 3, initial_interval: 8s}}\n",
    )
    state = tmp_path / "state"
    crashed = cli.start(*args)
    wait_for(lambda: "flaky: RETRYING" in crashed.output(), 60, "the first attempt to fail")
    kill_9_whole_cluster(crashed, state)
    assert len(lines(marker)) == 1

    resumed = cli.run(*args, timeout=90)
    assert resumed.code == 0, resumed.details
    assert_clean(resumed)
    assert "resuming" in resumed.stdout, resumed.details
    attempts = [float(line) for line in lines(marker)]
    assert len(attempts) == 2, resumed.details  # exactly twice: no attempt lost or repeated
    assert attempts[1] - attempts[0] >= 7.5  # the retry interval held across the crash
    assert not temporal_servers_under(state)


@pytest.mark.slow
def test_kill_9_of_the_whole_cluster_mid_step_then_resume(cli: Cli, tmp_path: Path) -> None:
    """As test_kill_9_then_resume, but the server is killed too (no graceful shutdown)."""
    args, files = write_resume_pipeline(tmp_path, first_sleep=6)
    crashed = cli.start(*args)
    wait_for(lambda: lines(files / "second"), 60, "step `second` to start")
    kill_9_whole_cluster(crashed, tmp_path / "state")

    resumed = cli.run(*args, timeout=90)
    assert resumed.code == 0, resumed.details
    assert_clean(resumed)
    assert "step second was interrupted; running it again" in resumed.stdout, resumed.details
    assert len(lines(files / "counter")) == 1
    assert len(lines(files / "second")) == 2
    assert len(lines(files / "third")) == 1


async def test_server_killed_after_the_run_keeps_the_runs_final_state(
    cli: Cli, tmp_path: Path
) -> None:
    """`laminar run --once` SIGKILLs its server once the run has ended (saving the ~1.2 s
    graceful drain): the finished run is in the database as completed, with its result, and
    the next `laminar run` on the state dir starts a new run rather than resuming it."""
    state = tmp_path / "state"
    first = cli.run("run", "--once", HELLO, "--no-ui", "--state-dir", state)
    assert first.code == 0, first.details
    assert_clean(first)
    run_id, _ = run_id_and_ds(first)
    assert not temporal_servers_under(state)

    server, client = await start_dev_server(
        state / "temporal.db", tmp_path / "inspect.log", ui=False
    )
    try:
        handle = client.get_workflow_handle(run_id, result_type=RunSummary)
        description = await handle.describe()
        assert description.status == WorkflowExecutionStatus.COMPLETED
        summary = await handle.result()
        assert summary.status == RunStatus.SUCCEEDED
    finally:
        server.stop()

    second = cli.run("run", "--once", HELLO, "--no-ui", "--state-dir", state)
    assert second.code == 0, second.details
    assert "resuming" not in second.stdout, second.details
    assert run_id_and_ds(second)[0] != run_id


@pytest.mark.slow
def test_kill_9_of_the_whole_cluster_during_a_local_step_then_resume(
    cli: Cli, tmp_path: Path
) -> None:
    """A local step runs inside the workflow's task: after a crash the new worker gets that
    task once its timeout (10 s) passes, and runs the step again from the start."""
    marker = tmp_path / "starts"
    args = one_script_pipeline(
        tmp_path,
        "quick",
        "import os, pathlib, time\n"
        "path = pathlib.Path(os.environ['MARKER'])\n"
        "runs = path.read_text().split() if path.exists() else []\n"
        "path.write_text(' '.join([*runs, str(os.getpid())]))\n"
        "time.sleep(6 if not runs else 0)\n",
        f"    env: {{MARKER: '{marker}'}}\n    local: true\n    timeout: 9s\n",
    )
    crashed = cli.start(*args)
    wait_for(marker.exists, 60, "the local step to start")
    kill_9_whole_cluster(crashed, tmp_path / "state")

    resumed = cli.run(*args, timeout=90)
    assert resumed.code == 0, resumed.details
    assert_clean(resumed)
    assert "resuming" in resumed.stdout, resumed.details
    assert len(marker.read_text().split()) == 2
    assert resumed.elapsed < 30, resumed.details
