"""`laminar runs trigger --wait` and `runs retry --wait` on a terminal (a pseudo-terminal here),
against a real `laminar server` and `laminar worker`: `laminar run`'s live step table while the
run goes (redrawn in place, no line per change), then the final table, and the run's exit
status: 1 for the failed run, 0 for its retry once the cause is fixed. (Off a terminal, the
line form: tests/service/test_runs_cli.py.)"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from pipeline_service.temporal.dev_server import DevServer
from tests.e2e.conftest import LAMINAR, Cli, running_platform

pytestmark = pytest.mark.slow

GATE = """\
import sys, time
from pathlib import Path
time.sleep(1.5)  # long enough for the live table to show the step running
if not Path(sys.argv[1]).exists():
    sys.exit(f"gate: {sys.argv[1]} is missing")
"""


def in_terminal(cli: Cli, env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run `laminar ARGS` with a pseudo-terminal as its stdin, stdout and stderr: its exit
    status and everything it wrote to the terminal (escape sequences included)."""
    control, terminal = pty.openpty()
    proc = subprocess.Popen(
        [str(LAMINAR), *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=cli.env({**env, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}),
        cwd=cli.tmp_path,
    )
    os.close(terminal)  # the child holds it now: reading ends (EIO) when the child is gone
    written = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([control], [], [], 0.5)[0]:
                try:
                    chunk = os.read(control, 65536)
                except OSError:  # EIO: every holder of the terminal closed it
                    break
                if not chunk:
                    break
                written += chunk
        else:
            proc.kill()
            pytest.fail(f"laminar {' '.join(args)} did not end in {timeout}s:\n{written.decode()}")
        return proc.wait(30), written.decode(errors="replace")
    finally:
        os.close(control)


def test_wait_on_a_terminal_shows_the_live_table_and_exits_with_the_runs_status(
    cli: Cli, dev_server: DevServer, tmp_path: Path
) -> None:
    project, fixed = tmp_path / "project", tmp_path / "fixed"
    project.mkdir()
    (project / "gate.py").write_text(GATE)
    (project / "pipeline.yaml").write_text(
        "name: gated\nsteps:\n  - id: first\n    type: noop\n"
        f'  - id: gate\n    type: python\n    script: gate.py\n    args: ["{fixed}"]\n'
        "    depends_on: [first]\n    retry: {max_attempts: 1}\n"
        "  - id: after\n    type: noop\n    depends_on: [gate]\n"
    )
    with running_platform(cli, dev_server.address, tmp_path, ("w1",)) as platform:
        env = platform.client_env
        assert cli.run("pipelines", "apply", project, env=env).code == 0

        code, shown = in_terminal(cli, env, "runs", "trigger", "gated", "--wait")
        assert code == 1, shown
        run_id = shown.split("run ", 1)[1].split()[0]
        live, final = shown.split("gated  [FAILED]", 1)
        # The live table, drawn in place (cursor control), showed the gate step running;
        # no line per change as off a terminal.
        assert "\x1b[" in live and "RUNNING" in live, shown
        assert "gate: RUNNING" not in shown and "gate: FAILED" not in shown, shown
        # The final table: every step with its outcome, the gate's error, the run's status.
        for step, status in (("first", "SUCCEEDED"), ("gate", "FAILED"), ("after", "SKIPPED")):
            assert any(step in line and status in line for line in final.splitlines()), shown
        assert "is missing" in final and "run FAILED" in final, shown
        assert "Traceback" not in shown

        fixed.touch()
        code, shown = in_terminal(cli, env, "runs", "retry", run_id, "--wait")
        assert code == 0, shown
        assert f"retries {run_id}" in shown, shown
        live, final = shown.split("gated  [SUCCEEDED]", 1)
        assert "\x1b[" in live and "gate: SUCCEEDED" not in shown, shown
        for step in ("first", "gate", "after"):
            assert any(step in line and "SUCCEEDED" in line for line in final.splitlines()), shown
        assert "run SUCCEEDED in " in final, shown
        platform.stop("w1")
