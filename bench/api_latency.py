"""Benchmark: API latency under a fixed arrival rate (open loop), against PostgreSQL.

Starts a Temporal dev server, a scratch PostgreSQL database, `laminar server` and `laminar
worker` as processes, then sends, for --seconds:
  GET  /v1/runs/{id}             at --reads per second (ids of finished runs)
  POST /v1/pipelines/{p}/runs    at --triggers per second (a 2-step no-op pipeline)
Requests are sent on schedule whether or not earlier ones have answered (a slow answer does
not slow the sender, so queueing shows in the figures); latency counts from the scheduled
send time. Targets: p99 <= 50 ms (read), <= 150 ms (trigger).

    .venv/bin/python bench/api_latency.py [--reads 200] [--triggers 20] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recording_systems import database

from pipeline_service.temporal.dev_server import free_port, start_dev_server

LAMINAR = Path(sys.executable).parent / "laminar"
ADMIN = "bench-admin"


async def open_loop(
    http: httpx.AsyncClient, rate: float, seconds: float, request: object
) -> tuple[list[float], int]:
    """Send `request()` at `rate`/s for `seconds`; (latencies in s, errors)."""
    latencies: list[float] = []
    errors = 0
    tasks = []
    began = time.perf_counter()
    total = int(rate * seconds)

    async def one(scheduled: float) -> None:
        nonlocal errors
        try:
            response = await request()  # type: ignore[operator]
            if response.status_code >= 400:
                errors += 1
        except httpx.HTTPError:
            errors += 1
        latencies.append(time.perf_counter() - scheduled)

    for i in range(total):
        scheduled = began + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    return latencies, errors


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, database("postgresql", Path(tmp)) as engine:
        root = Path(tmp)
        server, _client = await start_dev_server(root / "t.db", root / "t.log", ui=False)
        port = free_port()
        env = {
            **os.environ,
            "LAMINAR_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "LAMINAR_TEMPORAL_ADDRESS": server.address,
            "LAMINAR_ADMIN_API_KEY": ADMIN,
            "LAMINAR_HTTP_PORT": str(port),
            "LAMINAR_WORK_DIR": str(root / "work"),
        }
        procs = [
            subprocess.Popen(
                [str(LAMINAR), cmd, *(["--workers", str(args.workers)] if cmd == "server" else [])],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(root / f"{cmd}.log").open("wb"),
            )
            for cmd in ("server", "worker")
        ]
        try:
            await run_load(f"http://127.0.0.1:{port}", args)
            for cmd in ("server", "worker"):
                errors = (root / f"{cmd}.log").read_text(errors="replace").count("Traceback")
                print(f"{cmd}: {errors} tracebacks in its log")
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            server.stop()


async def run_load(base: str, args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/health/ready")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        await http.post("/v1/tenants", json={"name": "bench"}, headers=admin)
        key = (
            await http.post(
                "/v1/tenants/bench/keys", json={"name": "b", "scope": "operate"}, headers=admin
            )
        ).json()["key"]
        http.headers["Authorization"] = f"Bearer {key}"
        steps = [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop", "depends_on": ["a"]}]
        definition = {"name": "p", "steps": steps}
        await http.post("/v1/pipelines", json={"definition": definition})
        ids = [(await http.post("/v1/pipelines/p/runs", json={})).json()["id"] for _ in range(20)]
        reads = iter(range(10**9))

        def read() -> object:
            return http.get(f"/v1/runs/{ids[next(reads) % len(ids)]}")

        def trigger() -> object:
            return http.post("/v1/pipelines/p/runs", json={})

        for _ in range(50):  # warm-up
            await read()
        (read_lat, read_err), (trig_lat, trig_err) = await asyncio.gather(
            open_loop(http, args.reads, args.seconds, read),
            open_loop(http, args.triggers, args.seconds, trigger),
        )
    print(
        f"\nAPI latency, open loop for {args.seconds}s, PostgreSQL, `laminar server --workers "
        f"{args.workers}`"
    )
    print(f"{'request':<28}{'rate/s':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, rate, lat, err, target in (
        ("GET /v1/runs/{id}", args.reads, read_lat, read_err, 50),
        ("POST /v1/pipelines/p/runs", args.triggers, trig_lat, trig_err, 150),
    ):
        print(
            f"{name:<28}{rate:>8}{statistics.median(lat) * 1000:>9.1f}{pct(lat, 90):>9.1f}"
            f"{pct(lat, 99):>9.1f}{err:>8}   target p99 <= {target} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=float, default=200)
    parser.add_argument("--triggers", type=float, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=1, help="`laminar server` processes")
    asyncio.run(main(parser.parse_args()))
