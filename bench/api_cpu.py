"""Benchmark: the API's CPU time per request, in process, against PostgreSQL.

The figure that survives a shared, loaded machine: wall-clock latency there measures the
neighbours, CPU time per request (time.process_time over many requests, one at a time) what
the server itself spends. The app runs in this process behind httpx's ASGI transport (no
sockets, no HTTP parsing: what `laminar server` adds on top is the same for every route), so
the reference phase, GET /health/live, is the floor of client + ASGI stack; the rest is ours.

Phases, each after a warm-up:
  GET /health/live                        the reference
  GET /v1/runs/{id}                       finished runs of a 2-step no-op pipeline
  POST /v1/pipelines/{p}/runs             a trigger (recorded, and started on Temporal)

A worker runs the first runs to their end and stops before the phases: its CPU is not counted.
`--code DIR` measures another checkout's code (e.g. `git worktree add /tmp/main main`) with
this same script, for a before/after in one sitting.

    .venv/bin/python bench/api_cpu.py [--reads 2000] [--triggers 500] [--code DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def main(args: argparse.Namespace) -> None:
    import httpx
    from pydantic import SecretStr
    from recording_systems import database

    from pipeline_service.api.app import create_app
    from pipeline_service.db.session import session_factory
    from pipeline_service.settings import ServiceSettings
    from pipeline_service.temporal.dev_server import start_dev_server
    from pipeline_service.temporal.worker import build_worker
    from steps.engines.duckdb import DuckDBEngine

    with tempfile.TemporaryDirectory() as tmp, database("postgresql", Path(tmp)) as engine:
        root = Path(tmp)
        server, client = await start_dev_server(root / "t.db", root / "t.log", ui=False)
        try:
            settings = ServiceSettings(
                database_url=engine.url.render_as_string(hide_password=False),
                temporal_address=server.address,
                admin_api_key=SecretStr("bench-admin"),
                work_dir=root / "work",
                task_queue=f"bench-{uuid.uuid4()}",
            )
            app = create_app(settings, temporal=client)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                admin = {"Authorization": "Bearer bench-admin"}
                await http.post("/v1/tenants", json={"name": "bench"}, headers=admin)
                made = await http.post(
                    "/v1/tenants/bench/keys", json={"name": "b", "scope": "operate"}, headers=admin
                )
                auth = {"Authorization": f"Bearer {made.json()['key']}"}
                steps = [
                    {"id": "a", "type": "noop"},
                    {"id": "b", "type": "noop", "depends_on": ["a"]},
                ]
                definition = {"definition": {"name": "p", "steps": steps}}
                created = await http.post("/v1/pipelines", json=definition, headers=auth)
                assert created.status_code == 201, created.text
                warehouse = DuckDBEngine(root / "warehouse.duckdb")
                worker = build_worker(
                    client,
                    task_queue=settings.task_queue,
                    engine=warehouse,
                    work_root=settings.work_dir,
                    sessions=session_factory(engine),
                )
                async with worker:
                    ids = [
                        (await http.post("/v1/pipelines/p/runs", json={}, headers=auth)).json()[
                            "id"
                        ]
                        for _ in range(20)
                    ]
                    for run_id in ids:
                        while (await http.get(f"/v1/runs/{run_id}", headers=auth)).json()[
                            "status"
                        ] != "SUCCEEDED":
                            await asyncio.sleep(0.1)
                warehouse.close()

                async def live(i: int) -> httpx.Response:
                    return await http.get("/health/live")

                async def read(i: int) -> httpx.Response:
                    return await http.get(f"/v1/runs/{ids[i % len(ids)]}", headers=auth)

                async def trigger(i: int) -> httpx.Response:
                    return await http.post("/v1/pipelines/p/runs", json={}, headers=auth)

                rows = [
                    ("GET /health/live (reference)", await cpu_per_request(live, args.reads)),
                    ("GET /v1/runs/{id}", await cpu_per_request(read, args.reads)),
                    ("POST /v1/pipelines/p/runs", await cpu_per_request(trigger, args.triggers)),
                ]
        finally:
            server.stop()
    code = args.code or HERE.parent
    print(
        f"\nAPI CPU per request, in process (httpx ASGI transport), PostgreSQL, code {code}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(f"{'request':<31}{'requests':>9}{'CPU ms/req':>12}{'beyond ref':>12}{'/ref':>7}")
    reference = rows[0][1][1]
    for name, (count, cpu) in rows:
        print(
            f"{name:<31}{count:>9}{cpu * 1000:>12.2f}{(cpu - reference) * 1000:>12.2f}"
            f"{cpu / reference:>6.1f}x"
        )


async def cpu_per_request(
    request: Callable[[int], Awaitable[object]], count: int
) -> tuple[int, float]:
    """(count, this process's CPU seconds per request), one request at a time after 20 of
    warm-up; every answer must be a success."""
    for i in range(20):
        await request(i)
    began = time.process_time()
    for i in range(count):
        answer = await request(i)
        status = getattr(answer, "status_code", 0)
        assert status < 300, getattr(answer, "text", answer)
    return count, (time.process_time() - began) / count


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--triggers", type=int, default=500)
    parser.add_argument("--code", type=Path, help="measure this checkout's code instead")
    arguments = parser.parse_args()
    sys.path[:0] = [str(arguments.code or HERE.parent), str(HERE)]
    asyncio.run(main(arguments))
