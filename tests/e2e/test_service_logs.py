"""The platform's long-running processes log to stderr: timestamped lines at LAMINAR_LOG_LEVEL
(JSON lines with LAMINAR_LOG_FORMAT=json), never a secret. (A worker's recorder warnings
when its database goes away: test_worker_stop.py.)"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from pipeline_service.temporal.dev_server import free_port
from tests.conftest import scratch_postgres_database
from tests.e2e.conftest import Cli, Result, api_up, wait_for

ADMIN_KEY = "planted-admin-key-0d5e7c"
PASSWORD = "planted-db-password-91c4"
STAMP = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.\d]*Z \[(\w+)\s*\] "


def serve(cli: Cli, tmp_path: Path, database_url: str, **env: str) -> Result:
    """`laminar server` (with `env`) until it answered a request and stopped on SIGTERM."""
    port = free_port()
    server = cli.start(
        "server",
        env={
            "LAMINAR_DATABASE_URL": database_url,
            "LAMINAR_ADMIN_API_KEY": ADMIN_KEY,
            "LAMINAR_SECRET_KEY": "planted-secret-key-5a1f2b",
            "LAMINAR_HTTP_PORT": str(port),
            "LAMINAR_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",  # not needed here
            **env,
        },
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(api_up(base, "/health/live"), 60, f"the API; server said:\n{server.output()}")
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.get(f"{base}/v1/tenants", headers=headers).status_code == 200
    server.proc.send_signal(signal.SIGTERM)
    return server.wait(30)


def test_server_logs_at_the_level_set_timestamped_and_without_secrets(
    cli: Cli, tmp_path: Path
) -> None:
    with scratch_postgres_database() as url:
        # Trust auth accepts any password: one is planted in the URL to look for in the logs.
        database_url = make_url(url).set(password=PASSWORD).render_as_string(False)
        upgraded = cli.run("db", "upgrade", "--no-search-attributes", env={
            "LAMINAR_DATABASE_URL": database_url,
            "LAMINAR_TEMPORAL_ADDRESS": "127.0.0.1:1",
        })  # fmt: skip
        assert upgraded.code == 0, upgraded.details

        default = serve(cli, tmp_path, database_url)
        levels = re.findall(STAMP, default.stderr, re.M)
        assert "info" in levels, default.details  # uvicorn's start and stop, timestamped
        assert re.search(STAMP + r"Application startup complete", default.stderr, re.M)

        quiet = serve(cli, tmp_path, database_url, LAMINAR_LOG_LEVEL="WARNING")
        assert not re.findall(STAMP, quiet.stderr, re.M), quiet.details

        as_json = serve(cli, tmp_path, database_url, LAMINAR_LOG_FORMAT="json")
        records = [json.loads(line) for line in as_json.stderr.splitlines() if line.strip()]
        assert {"timestamp", "level", "logger", "message"} <= set(records[0]), as_json.details
        assert "Application startup complete." in [r["message"] for r in records]

        # Libraries' routine info lines (alembic's schema check) only from debug on; and
        # everything a debugging operator sees, start-up included, shows no secret.
        debug = serve(cli, tmp_path, database_url, LAMINAR_LOG_LEVEL="debug")
        assert "Context impl PostgresqlImpl" in debug.stderr, debug.details
        assert "Context impl" not in default.stderr, default.details
        for result in (default, quiet, as_json, debug):
            assert result.code in (0, 143) and "Traceback" not in result.output, result.details
            for secret in (ADMIN_KEY, PASSWORD, "planted-secret-key"):
                assert secret not in result.output, result.details

    bad = cli.run("server", env={"LAMINAR_LOG_LEVEL": "loud"})
    assert bad.code == 2 and "LAMINAR_LOG_LEVEL" in bad.stderr, bad.details
