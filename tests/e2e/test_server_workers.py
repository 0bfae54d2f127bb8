"""`laminar server` with several processes (LAMINAR_SERVER_WORKERS) on PostgreSQL: every
process serves the API, and /metrics, whichever process answers, counts every process's
requests (prometheus-client's multiprocess mode); a revoked key stops working in every
process within the key cache's few seconds."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import psutil

from pipeline_service.temporal.dev_server import free_port
from tests.conftest import scratch_postgres_database
from tests.e2e.conftest import E2E_ADMIN_KEY, Cli, api_up, wait_for

REQUESTS = 60
COUNT = re.compile(
    r'^laminar_api_request_seconds_count\{method="GET",route="/v1/pipelines",status="401"\} '
    r"(\S+)$",
    re.M,
)


def _counting(process: psutil.Process) -> list[str]:
    """The metric files a server process writes its counts into (once it has counted)."""
    return [f.path for f in process.open_files() if Path(f.path).name.startswith("histogram_")]


def _server_processes(pid: int) -> list[psutil.Process]:
    """The processes of `laminar server --workers N` (pid) that serve requests."""
    return [
        child
        for child in psutil.Process(pid).children()
        if "multiprocessing" in " ".join(child.cmdline())
        and "resource_tracker" not in " ".join(child.cmdline())
    ]


def test_server_processes_share_the_port_and_their_metrics(cli: Cli, tmp_path: Path) -> None:
    port = free_port()
    with scratch_postgres_database() as database_url:
        env = {
            "LAMINAR_DATABASE_URL": database_url,
            "LAMINAR_HTTP_PORT": str(port),
            "LAMINAR_SERVER_WORKERS": "2",
            "LAMINAR_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing here needs it
        }
        upgraded = cli.run("db", "upgrade", "--no-search-attributes", env=env)
        assert upgraded.code == 0, upgraded.details
        server = cli.start("server", env=env)
        base = f"http://127.0.0.1:{port}"
        wait_for(api_up(base, "/health/live"), 60, f"the API; server said:\n{server.output()}")

        # A new connection each: the kernel hands them to both processes' accept loops.
        for _ in range(REQUESTS):
            assert httpx.get(f"{base}/v1/pipelines").status_code == 401
        servers = _server_processes(server.proc.pid)
        assert len(servers) == 2, [c.cmdline() for c in servers]
        counted = [_counting(child) for child in servers]
        assert all(counted), f"a server process served none of {REQUESTS} connections: {counted}"

        for _ in range(4):  # whichever process answers, the same sum
            scraped = httpx.get(f"{base}/metrics")
            assert scraped.status_code == 200
            found = COUNT.search(scraped.text)
            assert found is not None, scraped.text
            assert float(found.group(1)) == REQUESTS
        server.proc.terminate()
        assert server.wait(30).code == 0, server.output()


def test_a_revoked_key_stops_working_in_every_server_process_within_the_cache_ttl(
    cli: Cli, tmp_path: Path
) -> None:
    port = free_port()
    with scratch_postgres_database() as database_url:
        env = {
            "LAMINAR_DATABASE_URL": database_url,
            "LAMINAR_HTTP_PORT": str(port),
            "LAMINAR_ADMIN_API_KEY": E2E_ADMIN_KEY,
            "LAMINAR_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing here needs it
        }
        upgraded = cli.run("db", "upgrade", "--no-search-attributes", env=env)
        assert upgraded.code == 0, upgraded.details
        server = cli.start("server", "--workers", "2", env=env)
        base = f"http://127.0.0.1:{port}"
        wait_for(api_up(base, "/health/live"), 60, f"the API; server said:\n{server.output()}")
        admin = {"Authorization": f"Bearer {E2E_ADMIN_KEY}"}
        assert httpx.post(f"{base}/v1/tenants", json={"name": "acme"}, headers=admin).is_success
        made = httpx.post(
            f"{base}/v1/tenants/acme/keys", json={"name": "ops", "scope": "read"}, headers=admin
        )
        assert made.status_code == 201, made.text
        tenant = {"Authorization": f"Bearer {made.json()['key']}"}

        def answers() -> list[int]:
            # A new connection each: the kernel hands them to both processes' accept loops.
            return [
                httpx.get(f"{base}/v1/pipelines", headers=tenant).status_code for _ in range(40)
            ]

        # Both processes resolved the key and cache it now (each counted requests).
        assert set(answers()) == {200}
        counted = [_counting(child) for child in _server_processes(server.proc.pid)]
        assert len(counted) == 2 and all(counted), counted

        revoked = httpx.delete(f"{base}/v1/tenants/acme/keys/ops", headers=admin)
        assert revoked.status_code == 204, revoked.text
        since = time.monotonic()
        window = 5 + 3  # the key cache's ttl (as the README says), a margin for a loaded machine
        while set(seen := answers()) != {401}:
            assert time.monotonic() - since < window, f"still accepted after {window}s: {seen}"
        # ...and for good: every process, every request.
        assert set(answers() + answers()) == {401}
        server.proc.terminate()
        assert server.wait(30).code == 0, server.output()
