"""Pipelines through the API: create, list, get with versions and diff, update, validate (also
the dry run, with YAML line and column), pause/resume/archive, graph, the JSON Schema."""

from __future__ import annotations

from typing import Any

from tests.service.conftest import Service

DIAMOND: dict[str, Any] = {
    "name": "diamond",
    "steps": [
        {"id": "a", "type": "noop"},
        {"id": "b", "type": "noop", "depends_on": ["a"]},
        {"id": "c", "type": "noop", "depends_on": ["a"]},
        {"id": "d", "type": "noop", "depends_on": ["b", "c"]},
    ],
}

BROKEN_YAML = """\
name: broken
steps:
  - id: a
    type: noop
  - id: b
    type: noop
    depends_on: [lod]
"""


async def test_pipeline_lifecycle(service: Service) -> None:
    tenant = await service.tenant()
    created = await tenant.apply(DIAMOND)
    assert created["status"] == "DRAFT" and created["current_version"] == 1
    assert created["created_by"] == "ci"

    changed = {**DIAMOND, "max_parallelism": 2}
    response = await tenant.http.put("/v1/pipelines/diamond", json={"definition": changed})
    assert response.status_code == 200, response.text
    assert response.json()["current_version"] == 2
    # The same definition again adds no version.
    response = await tenant.http.put("/v1/pipelines/diamond", json={"definition": changed})
    assert response.json()["current_version"] == 2

    response = await tenant.http.get("/v1/pipelines/diamond")
    body = response.json()
    assert [v["version"] for v in body["versions"]] == [1, 2]
    assert body["definition"]["max_parallelism"] == 2
    old = (await tenant.http.get("/v1/pipelines/diamond", params={"version": 1})).json()
    assert old["version"] == 1 and old["definition"]["max_parallelism"] != 2
    diff = (await tenant.http.get("/v1/pipelines/diamond/diff", params={"from": 1})).json()
    assert "+max_parallelism: 2" in diff["diff"] and diff["to_version"] == 2

    response = await tenant.http.post("/v1/pipelines/diamond/validate")
    assert response.status_code == 200 and response.json()["status"] == "VALIDATED"
    response = await tenant.http.post("/v1/pipelines/diamond/pause")
    assert response.json()["status"] == "PAUSED"
    response = await tenant.http.post("/v1/pipelines/diamond/runs", json={})
    assert response.status_code == 409 and "paused" in response.json()["detail"]
    response = await tenant.http.post("/v1/pipelines/diamond/resume")
    assert response.json()["status"] == "VALIDATED"
    response = await tenant.http.post("/v1/pipelines/diamond/archive")
    assert response.json()["status"] == "ARCHIVED"
    response = await tenant.http.put("/v1/pipelines/diamond", json={"definition": DIAMOND})
    assert response.status_code == 409
    response = await tenant.http.post("/v1/pipelines", json={"definition": DIAMOND})
    assert response.status_code == 409


async def test_list_pages_with_a_cursor(service: Service) -> None:
    tenant = await service.tenant()
    for i in range(5):
        await tenant.apply({"name": f"p{i}", "steps": [{"id": "a", "type": "noop"}]})
    names: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await tenant.http.get("/v1/pipelines", params=params)).json()
        names += [p["name"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == [f"p{i}" for i in range(5)]
    bad = await tenant.http.get("/v1/pipelines", params={"cursor": "%%%"})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"


async def test_dry_run_validation_stores_nothing_and_points_at_the_yaml(service: Service) -> None:
    tenant = await service.tenant("read")
    response = await tenant.http.post("/v1/pipelines/validate", json={"source": BROKEN_YAML})
    assert response.status_code == 422
    problem = response.json()
    assert problem["status"] == 422 and "lod" in problem["detail"]
    [error] = problem["errors"]
    assert error["path"] == "steps[1].depends_on"
    assert (error["line"], error["column"]) == (7, 17)  # the value of depends_on
    good = await tenant.http.post("/v1/pipelines/validate", json={"definition": DIAMOND})
    assert good.status_code == 200
    assert good.json()["levels"] == [["a"], ["b", "c"], ["d"]]
    listed = (await tenant.http.get("/v1/pipelines")).json()
    assert listed["items"] == []


async def test_create_refuses_an_invalid_definition_with_every_problem(service: Service) -> None:
    tenant = await service.tenant()
    bad = {"name": "Bad Name", "steps": [{"id": "a", "type": "nope"}]}
    response = await tenant.http.post("/v1/pipelines", json={"definition": bad})
    assert response.status_code == 422
    paths = {e["path"] for e in response.json()["errors"]}
    assert {"name", "steps[0].type"} <= paths
    both = await tenant.http.post("/v1/pipelines", json={"definition": bad, "source": "x"})
    assert both.status_code == 422 and both.json()["errors"]


async def test_graph_and_schema(service: Service) -> None:
    tenant = await service.tenant("read")
    writer = await service.tenant()
    await writer.apply(DIAMOND)
    graph = (await writer.http.get("/v1/pipelines/diamond/graph")).json()
    assert {(n["id"], n["level"]) for n in graph["nodes"]} == {
        ("a", 0), ("b", 1), ("c", 1), ("d", 2)
    }  # fmt: skip
    assert {(e["source"], e["target"]) for e in graph["edges"]} == {
        ("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")
    }  # fmt: skip
    schema = (await tenant.http.get("/v1/schemas/pipeline.json")).json()
    assert schema["$schema"].endswith("2020-12/schema") and "steps" in schema["properties"]


async def test_read_scope_cannot_write(service: Service) -> None:
    tenant = await service.tenant("read")
    response = await tenant.http.post("/v1/pipelines", json={"definition": DIAMOND})
    assert response.status_code == 403 and "operate" in response.json()["detail"]
