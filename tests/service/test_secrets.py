"""Tenant secrets: write-only API, encrypted at rest, resolved inside the activity; a planted
value appears in no workflow history, log, event or API response; tenants cannot reach each
other's secrets."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text
from temporalio.client import Client

from pipeline_service.db.models import OutboxEvent, Run, StepRun, TenantSecret
from tests.service.conftest import Service
from tests.service.test_runs import wait_finished

USES_TOKEN: dict[str, Any] = {
    "name": "uses-token",
    "steps": [
        {
            "id": "use",
            "type": "python",
            "script": "scripts/use_token.py",
            "env": {"TOKEN": {"secret": "warehouse_token"}},
        },
        {
            "id": "leak",
            "type": "python",
            "script": "scripts/use_token.py",
            "args": ["fail"],
            "env": {"TOKEN": {"secret": "warehouse_token"}},
            "depends_on": ["use"],
            "retry": {"max_attempts": 2, "initial_interval": 0.1},
        },
    ],
}


class Recorder:
    """Every response body the test sees, to grep for the planted value."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    async def __call__(self, response: httpx.Response) -> None:
        await response.aread()
        self.bodies.append(json.dumps(dict(response.headers)) + response.text)


def _decoded(node: Any) -> list[str]:
    """Every string in a history's JSON, with payload data base64-decoded."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "data" and isinstance(value, str):
                found.append(base64.b64decode(value).decode(errors="replace"))
            found.extend(_decoded(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_decoded(value))
    elif isinstance(node, str):
        found.append(node)
    return found


async def test_a_planted_secret_is_used_and_appears_nowhere(
    service: Service, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    planted = f"planted-{uuid.uuid4().hex}"
    tenant = await service.tenant(scope="admin")
    recorder = Recorder()
    tenant.http.event_hooks["response"].append(recorder)
    put = await tenant.http.put("/v1/secrets/warehouse_token", json={"value": planted})
    assert put.status_code == 201, put.text
    assert (
        await tenant.http.put("/v1/secrets/warehouse_token", json={"value": planted})
    ).status_code == 200
    listed = (await tenant.http.get("/v1/secrets")).json()
    assert [s["name"] for s in listed] == ["warehouse_token"]
    await tenant.apply(USES_TOKEN)
    run = (await tenant.http.post("/v1/pipelines/uses-token/runs", json={})).json()
    finished = await wait_finished(tenant, run["id"])
    steps = {s["step_id"]: s for s in finished["steps"]}
    # The script got the value: it reports its digest (never the value itself).
    digest = hashlib.sha256(planted.encode()).hexdigest()
    assert steps["use"]["status"] == "SUCCEEDED", finished
    assert steps["use"]["attempts"][0]["outputs"] == {"token_sha256": digest}
    # The failing step printed the value in its error's last line: masked.
    assert steps["leak"]["status"] == "FAILED", finished
    assert "the warehouse refused token ***" in steps["leak"]["attempts"][-1]["error"]
    assert "using token ***" in (steps["use"]["attempts"][0]["log_tail"] or "")
    await tenant.http.get(f"/v1/runs/{run['id']}/events")
    await tenant.http.get("/v1/events")

    history = await client.get_workflow_handle(finished["workflow_id"]).fetch_history()
    texts = _decoded(history.to_json_dict())
    assert any("warehouse_token" in t for t in texts)  # the reference is there, by name
    assert not [t for t in texts if planted in t]
    assert not [b for b in recorder.bodies if planted in b]
    assert planted not in caplog.text
    for path in Path(service.settings.work_dir).rglob("*"):
        if path.is_file():
            assert planted.encode() not in path.read_bytes(), path
    with service.sessions() as session:
        payloads = session.scalars(select(OutboxEvent.payload)).all()
        assert planted not in json.dumps(payloads)
        rows = session.execute(select(StepRun.error, StepRun.outputs)).all()
        assert planted not in repr(rows)
        stored = session.scalars(select(TenantSecret.ciphertext)).all()
        assert stored and not [c for c in stored if planted in c]
        assert planted not in repr(session.execute(select(Run)).all())
        if service.kind == "postgresql":
            # Nowhere in any table, as text.
            dump = session.execute(
                text("SELECT string_agg(t::text, '') FROM tenant_secrets t")
            ).scalar()
            assert planted not in (dump or "")


async def test_tenants_cannot_read_list_change_or_use_each_others_secrets(
    service: Service,
) -> None:
    owner = await service.tenant(scope="admin")
    other = await service.tenant(scope="admin")
    value = f"owner-{uuid.uuid4().hex}"
    assert (await owner.http.put("/v1/secrets/warehouse_token", json={"value": value})).is_success
    assert (await other.http.get("/v1/secrets")).json() == []
    assert (await other.http.delete("/v1/secrets/warehouse_token")).status_code == 404
    assert (await other.http.get("/v1/secrets/warehouse_token")).status_code in (404, 405)
    # The other tenant's pipeline naming the secret does not get the owner's value.
    await other.apply(USES_TOKEN)
    run = (await other.http.post("/v1/pipelines/uses-token/runs", json={})).json()
    finished = await wait_finished(other, run["id"])
    use = finished["steps"][0]["attempts"][-1]
    assert use["status"] == "FAILED" and use["error_type"] == "SecretNotFound", use
    assert value not in json.dumps(finished)
    with service.sessions() as session:
        names = session.execute(select(TenantSecret.tenant_id, TenantSecret.name)).all()
    assert len([n for n in names if n[1] == "warehouse_token"]) >= 1
    before = len(names)
    assert (await other.http.delete("/v1/secrets/warehouse_token")).status_code == 404
    with service.sessions() as session:
        assert len(session.execute(select(TenantSecret.id)).all()) == before
    assert [s["name"] for s in (await owner.http.get("/v1/secrets")).json()] == ["warehouse_token"]
    assert (await owner.http.delete("/v1/secrets/warehouse_token")).status_code == 204
    assert (await owner.http.get("/v1/secrets")).json() == []


async def test_writing_secrets_needs_an_admin_key_and_a_valid_name(service: Service) -> None:
    operator = await service.tenant(scope="operate")
    denied = await operator.http.put("/v1/secrets/token", json={"value": "x"})
    assert denied.status_code == 403, denied.text
    admin = await service.tenant(scope="admin")
    bad = await admin.http.put("/v1/secrets/no%20spaces", json={"value": "x"})
    assert bad.status_code == 422, bad.text
    huge = await admin.http.put("/v1/secrets/big", json={"value": "x" * (64 * 1024 + 1)})
    assert huge.status_code == 422 and "x" * 100 not in huge.text
