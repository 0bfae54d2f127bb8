"""`laminar server` with several processes (LAMINAR_SERVER_WORKERS) on PostgreSQL: every
process serves the API, and /metrics, whichever process answers, counts every process's
requests (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import psutil

from pipeline_service.temporal.dev_server import free_port
from tests.conftest import scratch_postgres_database
from tests.e2e.conftest import Cli, api_up, wait_for

REQUESTS = 60
COUNT = re.compile(
    r'^laminar_api_request_seconds_count\{method="GET",route="/v1/pipelines",status="401"\} '
    r"(\S+)$",
    re.M,
)


def _counting(process: psutil.Process) -> list[str]:
    """The metric files a server process writes its counts into (once it has counted)."""
    return [f.path for f in process.open_files() if Path(f.path).name.startswith("histogram_")]


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
        servers = [
            child
            for child in psutil.Process(server.proc.pid).children()
            if "multiprocessing" in " ".join(child.cmdline())
            and "resource_tracker" not in " ".join(child.cmdline())
        ]
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
