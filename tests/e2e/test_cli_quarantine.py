"""`laminar quarantine replay` against a real `laminar server` (SQLite): the command reaches the
replay endpoint and reports its refusal (the whole replay runs in
tests/service/test_quarantine_replay.py, with a worker)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx

from pipeline_service.temporal.dev_server import free_port
from tests.e2e.conftest import Cli, wait_for

ADMIN = "e2e-admin-key"


def test_replay_of_an_unknown_run_is_a_clear_404(cli: Cli, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "LAMINAR_DATABASE_URL": f"sqlite:///{tmp_path / 'laminar.db'}",
        "LAMINAR_ADMIN_API_KEY": ADMIN,
        "LAMINAR_HTTP_PORT": str(port),
        "LAMINAR_SECRET_KEY": "e2e-secret-key-0123456789",
        "LAMINAR_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing waits: not needed
    }
    upgraded = cli.run("db", "upgrade", "--no-search-attributes", env=env)
    assert upgraded.code == 0, upgraded.details
    server = cli.start("server", env=env)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/health/live").status_code == 200
        return False

    wait_for(ready, 30, f"the API; server said:\n{server.output()}")
    admin = {"LAMINAR_URL": base, "LAMINAR_API_KEY": ADMIN}
    assert cli.run("tenants", "create", "acme", env=admin).code == 0
    made = cli.run("keys", "create", "ops", "--tenant", "acme", "--scope", "operate", env=admin)
    assert made.code == 0, made.details
    tenant = {"LAMINAR_URL": base, "LAMINAR_API_KEY": made.stdout.strip().splitlines()[-1]}
    result = cli.run("quarantine", "replay", "r-nope", "not_null_id", env=tenant)
    assert result.code != 0, result.details
    assert "404" in result.stderr and "r-nope" in result.stderr, result.details
    assert "Traceback" not in result.output
    helped = cli.run("quarantine", "replay", "--help", env=tenant)
    assert helped.code == 0 and "--step" in helped.stdout, helped.details
