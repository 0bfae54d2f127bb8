"""Security: every endpoint needs a key; another tenant's objects are 404 and nothing is
written; oversize bodies are 413 before parsing; hostile YAML is 422 fast; params stay inert."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from sqlalchemy import func, select

from pipeline_service.db.models import OutboxEvent, Pipeline, PipelineVersion, Run, StepRun
from tests.service.conftest import ADMIN_KEY, Service
from tests.service.test_runs import wait_finished

PUBLIC = {
    "/health/live",
    "/health/ready",
    "/metrics",
    "/v1/schemas/pipeline.json",
    # The event documents: what every consumer reads; no tenant data.
    "/v1/events/schemas",
    "/v1/events/schemas/{type}",
    "/v1/events/asyncapi.json",
}
ONE_STEP = {"name": "target", "steps": [{"id": "a", "type": "noop"}]}


def _routes(service: Service) -> list[tuple[str, str]]:
    """Every operation the OpenAPI document lists, path parameters filled in."""
    routes = []
    for template, operations in service.app.openapi()["paths"].items():
        if template not in PUBLIC:
            path = re.sub(r"\{[^}]+\}", "x", template)
            routes += [(method.upper(), path) for method in operations]
    return routes


async def test_every_endpoint_refuses_a_missing_or_bad_key(service: Service) -> None:
    routes = _routes(service)
    assert len(routes) >= 20
    for headers in ({}, {"Authorization": "Bearer lam_not-a-key"}, {"Authorization": "Basic x"}):
        for method, path in routes:
            response = await service.http.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == "Bearer"


async def test_tenant_keys_cannot_use_the_admin_api_and_admin_cannot_read_runs(
    service: Service,
) -> None:
    tenant = await service.tenant("admin")
    response = await tenant.http.post("/v1/tenants", json={"name": "sneaky"})
    assert response.status_code == 403
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = await service.http.get("/v1/runs", headers=admin)
    assert response.status_code == 403


def _counts(service: Service) -> dict[str, int]:
    with service.sessions() as session:
        return {
            model.__name__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (Pipeline, PipelineVersion, Run, StepRun, OutboxEvent)
        }


async def test_another_tenants_objects_are_not_found_and_nothing_is_written(
    service: Service,
) -> None:
    owner, intruder = await service.tenant(), await service.tenant("admin")
    await owner.apply(ONE_STEP)
    run = (await owner.http.post("/v1/pipelines/target/runs", json={})).json()
    await wait_finished(owner, run["id"])
    before = _counts(service)
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v1/pipelines/target", None),
        ("GET", "/v1/pipelines/target/graph", None),
        ("GET", "/v1/pipelines/target/diff?from=1", None),
        ("PUT", "/v1/pipelines/target", {"definition": ONE_STEP}),
        ("POST", "/v1/pipelines/target/validate", None),
        ("POST", "/v1/pipelines/target/pause", None),
        ("POST", "/v1/pipelines/target/archive", None),
        ("POST", "/v1/pipelines/target/runs", {}),
        ("GET", f"/v1/runs/{run['id']}", None),
        ("POST", f"/v1/runs/{run['id']}/cancel", None),
        ("POST", f"/v1/runs/{run['id']}/retry", {}),
        ("POST", f"/v1/runs/{run['id']}/steps/a/mark", {"status": "SKIPPED", "reason": "x"}),
        ("GET", "/v1/runs?pipeline=target", None),
    ]
    for method, path, body in requests:
        response = await intruder.http.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert owner.name not in response.text  # nothing of the owner's leaks
    listed = (await intruder.http.get("/v1/runs")).json()
    assert listed["items"] == []
    assert _counts(service) == before


async def test_oversize_bodies_are_refused_before_parsing(service: Service) -> None:
    tenant = await service.tenant()
    limit = service.settings.max_body_bytes
    big = b'{"source": "' + b"x" * limit + b'"}'
    response = await tenant.http.post(
        "/v1/pipelines", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["status"] == 413

    async def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    response = await tenant.http.post(
        "/v1/pipelines/validate", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


async def test_hostile_yaml_is_refused_fast(service: Service) -> None:
    tenant = await service.tenant("read")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    deep = "x: " + "[" * 5000 + "]" * 5000
    for text in (bomb, deep):
        began = time.perf_counter()
        response = await tenant.http.post("/v1/pipelines/validate", json={"source": text})
        assert response.status_code == 422, response.text
        assert time.perf_counter() - began < 1.0
    deep_json = {"definition": {"name": "x", "steps": [], "z": _nested(100)}}
    response = await tenant.http.post("/v1/pipelines/validate", json=deep_json)
    assert response.status_code == 422


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_params_with_sql_and_template_injection_stay_inert(service: Service) -> None:
    tenant = await service.tenant()
    table = f"inj_{tenant.name.replace('-', '_')}"
    await tenant.apply(
        {
            "name": "inject",
            "params": {"x": "text"},
            "steps": [
                {
                    "id": "store",
                    "type": "sql",
                    "sql": f"CREATE OR REPLACE TABLE {table} AS SELECT {{{{ params.x }}}} AS v",
                }
            ],
        }
    )
    hostile = "'); DROP TABLE secrets; -- {{ 7*7 }} {% raw %}"
    response = await tenant.http.post("/v1/pipelines/inject/runs", json={"params": {"x": hostile}})
    assert response.status_code == 201, response.text
    run = await wait_finished(tenant, response.json()["id"])
    assert run["status"] == "SUCCEEDED", run
    rows = await asyncio.to_thread(
        lambda: service.warehouse.cursor().execute(f"SELECT v FROM {table}").fetchall()
    )
    assert rows == [(hostile,)]


async def test_problem_bodies_for_unknown_paths_and_bad_json(service: Service) -> None:
    tenant = await service.tenant()
    response = await tenant.http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    response = await tenant.http.post(
        "/v1/pipelines", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["errors"]
    assert response.headers["content-type"] == "application/problem+json"
    assert "JSON" in response.json()["detail"], response.json()


async def test_a_revoked_key_stops_working_at_once(service: Service) -> None:
    tenant = await service.tenant("read")
    assert (await tenant.http.get("/v1/runs")).status_code == 200
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = await service.http.delete(f"/v1/tenants/{tenant.name}/keys/ci", headers=admin)
    assert response.status_code == 204
    assert (await tenant.http.get("/v1/runs")).status_code == 401
