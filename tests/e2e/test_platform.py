"""The platform shape as an operator runs it: `laminar db upgrade` (schema + search attributes
on a namespace that lacks them), `laminar server` and `laminar worker` as processes over
PostgreSQL and a Temporal server, then the README's walk-through over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

from pipeline_service.events.broker import EmbeddedBroker
from pipeline_service.temporal.client import connect
from pipeline_service.temporal.dev_server import free_port, temporal_binary
from tests.conftest import scratch_postgres_database
from tests.e2e.conftest import Cli, api_up, wait_for
from tests.service.test_runs import SLOW_SQL

ADMIN = "e2e-admin-key"
HELLO = """\
name: hello
steps:
  - id: a
    type: noop
  - id: b
    type: noop
    depends_on: [a]
"""


@pytest.fixture
def bare_temporal(tmp_path: Path) -> Iterator[str]:
    """A dev server started without Laminar's search attributes (as a real cluster is)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(temporal_binary()), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
         "--port", str(port), "--db-filename", str(tmp_path / "bare-temporal.db"),
         "--log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _search_attributes(address: str) -> set[str]:
    for _ in range(100):
        with contextlib.suppress(Exception):
            client = await connect(address)
            found = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace="default")
            )
            return set(found.custom_attributes)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no Temporal at {address}")


async def _terminate(address: str, workflow_id: str, reason: str) -> None:
    client = await connect(address)
    await client.get_workflow_handle(workflow_id).terminate(reason=reason)


def test_server_and_worker_processes_run_a_pipeline(
    cli: Cli, bare_temporal: str, tmp_path: Path, kafka_broker: EmbeddedBroker
) -> None:
    assert "LaminarTenant" not in asyncio.run(_search_attributes(bare_temporal))
    port = free_port()
    with scratch_postgres_database() as database_url:
        env = {
            "LAMINAR_DATABASE_URL": database_url,
            "LAMINAR_TEMPORAL_ADDRESS": bare_temporal,
            "LAMINAR_ADMIN_API_KEY": ADMIN,
            "LAMINAR_HTTP_PORT": str(port),
            "LAMINAR_WORK_DIR": str(tmp_path / "work"),
            "LAMINAR_TASK_QUEUE": f"e2e-{port}",
            # The worker relays the outbox to Kafka when this is set.
            "LAMINAR_KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
            "LAMINAR_EVENTS_TOPIC": f"e2e-events-{port}",
            # The worker reconciles runs that Temporal ended on its own: quickly, for the test.
            "LAMINAR_RECONCILE_INTERVAL": "500ms",
            "LAMINAR_RECONCILE_AFTER": "0s",
            # Logs as JSON lines on stderr: a logged warning's traceback (the Temporal SDK's
            # for the terminated run's step) stays inside its record, so a traceback at the
            # start of a line is one a crash printed.
            "LAMINAR_LOG_FORMAT": "json",
        }
        refused = cli.run("server", env=env)
        assert refused.code == 2 and "laminar db upgrade" in refused.stderr, refused.details
        upgraded = cli.run("db", "upgrade", env=env)
        assert upgraded.code == 0, upgraded.details
        assert {"LaminarTenant", "LaminarPipeline"} <= asyncio.run(
            _search_attributes(bare_temporal)
        )
        again = cli.run("db", "upgrade", env=env)
        assert again.code == 0 and "already registered" in again.stdout, again.details

        server = cli.start("server", env=env)
        worker = cli.start("worker", env=env)
        base = f"http://127.0.0.1:{port}"

        wait_for(api_up(base), 60, f"the API to be ready; server said:\n{server.output()}")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.post("/v1/tenants", json={"name": "acme"}, headers=admin).status_code == 201
            key = http.post(
                "/v1/tenants/acme/keys", json={"name": "ci", "scope": "operate"}, headers=admin
            ).json()["key"]
            auth = {"Authorization": f"Bearer {key}"}
            source = HELLO
            created = http.post("/v1/pipelines", json={"source": source}, headers=auth)
            assert created.status_code == 201, created.text
            run = http.post("/v1/pipelines/hello/runs", json={}, headers=auth).json()
            deadline = time.monotonic() + 60
            while run["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
                assert time.monotonic() < deadline, (run, worker.output())
                time.sleep(0.2)
                run = http.get(f"/v1/runs/{run['id']}", headers=auth).json()
            assert run["status"] == "SUCCEEDED", (run, worker.output())
            assert [s["status"] for s in run["steps"]] == ["SUCCEEDED", "SUCCEEDED"]

            # A run terminated from Temporal's side: the worker's reconciler records it.
            slow = {"name": "slow", "steps": [{"id": "s", "type": "sql", "sql": SLOW_SQL}]}
            assert http.post("/v1/pipelines", json={"definition": slow}, headers=auth).is_success
            run = http.post("/v1/pipelines/slow/runs", json={}, headers=auth).json()
            wait_for(
                lambda: (
                    http.get(f"/v1/runs/{run['id']}", headers=auth).json()["status"] == "RUNNING"
                ),
                30,
                "the slow run to start",
            )
            asyncio.run(_terminate(bare_temporal, run["workflow_id"], "e2e says stop"))
            wait_for(
                lambda: (
                    http.get(f"/v1/runs/{run['id']}", headers=auth).json()["status"] == "FAILED"
                ),
                30,
                f"the reconciler to record the end; worker said:\n{worker.output()}",
            )
            ended = http.get(f"/v1/runs/{run['id']}", headers=auth).json()
            assert "e2e says stop" in ended["error"], ended

        # The same through the CLI client.
        client_env = {"LAMINAR_URL": base, "LAMINAR_API_KEY": ADMIN}
        assert cli.run("tenants", "create", "beta", env=client_env).code == 0
        made = cli.run("keys", "create", "ops", "--tenant", "beta", "--scope", "operate",
                       env=client_env)  # fmt: skip
        assert made.code == 0, made.details
        client_env["LAMINAR_API_KEY"] = made.stdout.strip().splitlines()[-1]
        (tmp_path / "hello.yaml").write_text(HELLO)
        applied = cli.run("pipelines", "apply", tmp_path / "hello.yaml", env=client_env)
        assert applied.code == 0 and "version 1" in applied.stdout, applied.details
        listed = cli.run("pipelines", "list", env=client_env)
        assert "hello" in listed.stdout, listed.details
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: bad\nsteps:\n  - id: a\n    type: noop\n    depends_on: [zz]\n")
        refused = cli.run("pipelines", "validate", bad, env=client_env)
        assert refused.code == 2 and "steps[0].depends_on" in refused.stderr, refused.details
        assert "line 5" in refused.stderr and "Traceback" not in refused.output
        waited = cli.run("runs", "trigger", "hello", "--wait", env=client_env)
        assert waited.code == 0 and "SUCCEEDED" in waited.stdout, waited.details
        run_id = waited.stdout.split()[1]
        shown = cli.run("runs", "show", run_id, env=client_env)
        assert shown.code == 0 and "SUCCEEDED" in shown.stdout, shown.details
        history = cli.run("events", "tail", "--run", run_id, "--json", env=client_env)
        assert history.code == 0, history.details
        ids = [json.loads(line)["id"] for line in history.stdout.splitlines()]
        types = [json.loads(line)["type"] for line in history.stdout.splitlines()]
        assert types[0] == "PIPELINE_QUEUED" and types[-1] == "PIPELINE_SUCCEEDED", types
        feed = cli.run("events", "tail", "--no-follow", env=client_env)
        assert feed.code == 0 and "PIPELINE_CREATED hello" in feed.stdout, feed.details
        assert feed.stdout.count(run_id) == len(ids), feed.details

        def on_kafka() -> bool:
            consumed = cli.run("events", "tail", "--kafka", "--no-follow", "--json", env=env)
            seen = [json.loads(line) for line in consumed.stdout.splitlines()]
            return [e["id"] for e in seen if e["subject"] == run_id] == ids

        wait_for(on_kafka, 60, f"the run's events on Kafka; worker said:\n{worker.output()}")
        nobody = cli.run("runs", "list", env={**client_env, "LAMINAR_API_KEY": "wrong"})
        assert nobody.code == 2 and "401" in nobody.stderr, nobody.details
        for proc in (server, worker):
            proc.proc.send_signal(signal.SIGTERM)
            result = proc.wait(20)
            assert not re.search("^Traceback", result.output, re.M), result.output
            logged = [json.loads(line) for line in result.stderr.splitlines()]
            assert all({"timestamp", "level", "message"} <= set(r) for r in logged), logged
        # The reconciler's record of the terminated run reached the worker's log.
        assert any(r["logger"] == "pipeline_service.reconciler" for r in logged), logged
