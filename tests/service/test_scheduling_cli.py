"""The scheduling commands against the real API (served by uvicorn on a free port in this
test's event loop): schedule show/pause/unpause, backfill (dry run, --wait), backfills show,
runs trigger refused for a scheduled date unless --rerun."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvicorn
from typer.testing import CliRunner, Result

from pipeline_service.commands import app
from pipeline_service.temporal.dev_server import free_port
from tests.service.conftest import Service


@pytest.fixture
async def api_url(service: Service) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            service.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def laminar(url: str, key: str, *args: str) -> Result:
    """Run a command in a thread (it blocks on HTTP to the server in this loop)."""
    env = {"LAMINAR_URL": url, "LAMINAR_API_KEY": key, "COLUMNS": "200"}
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def test_scheduling_commands(service: Service, api_url: str) -> None:
    tenant = await service.tenant()
    await tenant.apply(
        {
            "name": "nightly",
            "schedule": {"cron": "30 2 * * *", "timezone": "Europe/Berlin"},
            "steps": [{"id": "a", "type": "noop"}],
        }
    )
    shown = await laminar(api_url, tenant.key, "schedule", "show", "nightly", "--count", "3")
    assert shown.exit_code == 0, shown.output
    assert "30 2 * * * in Europe/Berlin: active" in shown.output
    assert shown.output.count("next: ") == 3 and "T02:30:00+0" in shown.output
    paused = await laminar(api_url, tenant.key, "schedule", "pause", "nightly")
    assert paused.exit_code == 0 and "paused" in paused.output, paused.output

    # 2027-03-28 has no 02:30 in Berlin: its run fires at 03:30 and still covers the day.
    span = ["--start", "2027-03-26", "--end", "2027-03-31"]
    dry = await laminar(api_url, tenant.key, "backfill", "nightly", *span, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "2027-03-28T01:30:00Z" in dry.output  # 03:30 CEST
    assert "4 of 4 intervals would run" in dry.output, dry.output
    ran = await laminar(api_url, tenant.key, "backfill", "nightly", *span, "--wait")
    assert ran.exit_code == 0, ran.output
    assert "COMPLETED; 4 intervals;" in ran.output and "succeeded 4" in ran.output, ran.output
    backfill_id = ran.output.split("backfill ")[1].split()[0]
    shown = await laminar(api_url, tenant.key, "backfills", "show", backfill_id)
    assert shown.exit_code == 0 and "COMPLETED" in shown.output, shown.output

    date = "2027-03-28T01:30:00Z"
    refused = await laminar(
        api_url, tenant.key, "runs", "trigger", "nightly", "--logical-date", date
    )
    assert refused.exit_code != 0 and "already has a backfill run" in refused.output, refused.output
    rerun = await laminar(
        api_url, tenant.key, "runs", "trigger", "nightly", "--logical-date", date, "--rerun"
    )
    assert rerun.exit_code == 0, rerun.output
    missing = await laminar(api_url, tenant.key, "backfills", "show", "bf-nope")
    assert missing.exit_code != 0 and "not found" in missing.output, missing.output
