"""Code bundles through the API: files sent with the definition are validated and run from
the bundle (not the server's directory), are content-addressed per version, and stay
confined."""

from __future__ import annotations

import base64
from typing import Any

from tests.service.conftest import Service
from tests.service.test_runs import wait_finished

SCRIPT = b"""\
import json, os
from pathlib import Path
query = (Path(__file__).parent / "query.sql").read_text().strip()
Path(os.environ["LAMINAR_RESULT"]).write_text(json.dumps({"query": query}))
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body(script: str = "bundled/run.py", sql: bytes = b"SELECT 42") -> dict[str, Any]:
    return {
        "definition": {
            "name": "bundled",
            "steps": [{"id": "run", "type": "python", "script": script}],
        },
        "files": {"bundled/run.py": b64(SCRIPT), "bundled/query.sql": b64(sql)},
    }


async def test_a_bundled_pipeline_runs_from_its_bundle(service: Service) -> None:
    tenant = await service.tenant()
    assert not (service.settings.source_dir / "bundled").exists()
    created = await tenant.http.post("/v1/pipelines", json=body())
    assert created.status_code == 201, created.text
    run = (await tenant.http.post("/v1/pipelines/bundled/runs", json={})).json()
    done = await wait_finished(tenant, run["id"])
    assert done["status"] == "SUCCEEDED", done
    assert done["steps"][0]["attempts"][0]["outputs"] == {"query": "SELECT 42"}
    # The same files: no new version; another SQL file: a new one, whose run sees it.
    same = await tenant.http.put("/v1/pipelines/bundled", json=body())
    assert same.json()["current_version"] == 1, same.text
    changed = await tenant.http.put("/v1/pipelines/bundled", json=body(sql=b"SELECT 7"))
    assert changed.json()["current_version"] == 2, changed.text
    again = (await tenant.http.post("/v1/pipelines/bundled/runs", json={})).json()
    done = await wait_finished(tenant, again["id"])
    assert done["steps"][0]["attempts"][0]["outputs"] == {"query": "SELECT 7"}, done


async def test_bundle_paths_and_scripts_stay_confined(service: Service) -> None:
    tenant = await service.tenant()
    escaping = body()
    escaping["files"]["../outside.py"] = b64(b"print('no')")
    refused = await tenant.http.post("/v1/pipelines", json=escaping)
    assert refused.status_code == 422 and "files.../outside.py" in refused.text, refused.text
    absolute = body()
    absolute["files"]["/etc/passwd"] = b64(b"x")
    assert (await tenant.http.post("/v1/pipelines", json=absolute)).status_code == 422
    outside = await tenant.http.post("/v1/pipelines", json=body(script="../bundled/run.py"))
    assert outside.status_code == 422 and "escapes" in outside.text, outside.text
    missing = await tenant.http.post("/v1/pipelines", json=body(script="bundled/nope.py"))
    assert missing.status_code == 422 and "no such file" in missing.text, missing.text
    not_b64 = body()
    not_b64["files"]["bundled/run.py"] = "%%%"
    assert (await tenant.http.post("/v1/pipelines", json=not_b64)).status_code == 422
