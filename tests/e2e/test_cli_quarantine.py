"""`laminar quarantine replay` against a real `laminar server` (SQLite): the command reaches the
replay endpoint and reports its refusal (the whole replay runs in
tests/service/test_quarantine_replay.py, with a worker)."""

from __future__ import annotations

from pathlib import Path

from pipeline_service.temporal.dev_server import free_port
from tests.e2e.conftest import Cli, sqlite_server_with_tenant


def test_replay_of_an_unknown_run_is_a_clear_404(cli: Cli, tmp_path: Path) -> None:
    _server, tenant = sqlite_server_with_tenant(cli, tmp_path, "operate", free_port())
    result = cli.run("quarantine", "replay", "r-nope", "not_null_id", env=tenant)
    assert result.code != 0, result.details
    assert "404" in result.stderr and "r-nope" in result.stderr, result.details
    assert "Traceback" not in result.output
    helped = cli.run("quarantine", "replay", "--help", env=tenant)
    assert helped.code == 0 and "--step" in helped.stdout, helped.details
