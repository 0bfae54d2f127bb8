"""Benchmark: API latency under a fixed arrival rate (open loop), against PostgreSQL.

Starts a Temporal dev server, a scratch PostgreSQL database, `laminar server` and `laminar
worker` as processes. Then, for each --load READS/TRIGGERS (per second), for --seconds:

  reference  GET /health/live at READS+TRIGGERS per second: the same server, HTTP stack and
             machine with no database work, so the figures below show what the machine allows
  load       GET /v1/runs/{id} at READS/s (ids of finished runs) together with
             POST /v1/pipelines/{p}/runs at TRIGGERS/s (a 2-step no-op pipeline)

and, once, the same run read as raw SQL (psycopg, one connection, sequential): the database's
own floor. Requests are sent on schedule whether or not earlier ones have answered (a slow
answer does not slow the sender, so queueing shows in the figures); latency counts from the
scheduled send time. The client is aiohttp (httpx's connection pool costs more CPU per request
than the server at these rates on 2 cores, and then measures itself). Targets: p99 <= 50 ms
(read), <= 150 ms (trigger).

    .venv/bin/python bench/api_latency.py [--load 200/20 --load 100/10] [--seconds 30]
        [--workers 2] [--runs-elsewhere]   # --runs-elsewhere: stop the worker after seeding
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import psycopg
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recording_systems import database

from pipeline_service.temporal.dev_server import free_port, start_dev_server

LAMINAR = Path(sys.executable).parent / "laminar"
ADMIN = "bench-admin"
READ_TARGET_MS, TRIGGER_TARGET_MS = 50.0, 150.0

Request = Callable[[], Awaitable[int]]


@dataclass
class Figures:
    latencies: list[float]
    errors: int

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) * 1000


async def open_loop(rate: float, seconds: float, request: Request) -> Figures:
    """Send `request()` at `rate`/s for `seconds`, never waiting for answers before sending."""
    figures = Figures([], 0)
    tasks = []
    began = time.perf_counter()

    async def one(scheduled: float) -> None:
        try:
            if await request() >= 400:
                figures.errors += 1
        except (aiohttp.ClientError, TimeoutError):
            figures.errors += 1
        figures.latencies.append(time.perf_counter() - scheduled)

    for i in range(int(rate * seconds)):
        scheduled = began + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    return figures


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, database("postgresql", Path(tmp)) as engine:
        root = Path(tmp)
        server, _client = await start_dev_server(root / "t.db", root / "t.log", ui=False)
        port = free_port()
        url = engine.url.render_as_string(hide_password=False)
        env = {
            **os.environ,
            "LAMINAR_DATABASE_URL": url,
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
            args.load_before = os.getloadavg()[0]
            server_cpu = [psutil.Process(procs[0].pid)]

            def stop_worker() -> None:
                procs[1].send_signal(signal.SIGTERM)
                procs[1].wait(30)

            await run_load(
                f"http://127.0.0.1:{port}",
                url.replace("+psycopg", ""),
                args,
                server_cpu,
                stop_worker if args.runs_elsewhere else None,
            )
            for cmd in ("server", "worker"):
                errors = (root / f"{cmd}.log").read_text(errors="replace").count("Traceback")
                print(f"{cmd}: {errors} tracebacks in its log")
                if args.logs:
                    args.logs.mkdir(parents=True, exist_ok=True)
                    (args.logs / f"{cmd}.log").write_bytes((root / f"{cmd}.log").read_bytes())
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            server.stop()


Buckets = dict[tuple[str, str], dict[float, float]]


async def server_buckets(http: aiohttp.ClientSession) -> Buckets:
    """The server's own latency histogram (`laminar_api_request_seconds`, from /metrics):
    cumulative counts per bucket bound, by (method, route) of answers under 400."""
    async with http.get("/metrics") as answer:
        text = await answer.text()
    found: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != "laminar_api_request_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_bucket") and int(labels["status"]) < 400:
                bounds = found.setdefault((labels["method"], labels["route"]), {})
                bound = float(labels["le"])
                bounds[bound] = bounds.get(bound, 0.0) + sample.value
    return found


def server_p99(before: Buckets, after: Buckets, method: str, route: str) -> str:
    """The bucket bound under which 99% of the server's own latencies fell between the two
    snapshots ('<= 75' ms): the time from the request's arrival in the app to its answer,
    without the client's, the kernel's and the HTTP parsing's share."""
    now, then = after.get((method, route), {}), before.get((method, route), {})
    counts = sorted((bound, now[bound] - then.get(bound, 0.0)) for bound in now)
    if not counts or counts[-1][1] <= 0:
        return ""
    for bound, count in counts:
        if count >= 0.99 * counts[-1][1]:
            return f"<={bound * 1000:g}"
    return ""


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU time of the server process(es) and their children so far."""
    total = 0.0
    for process in processes:
        for each in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = each.cpu_times()
                total += times.user + times.system
    return total


async def run_load(
    base: str,
    database_url: str,
    args: argparse.Namespace,
    server: list[psutil.Process],
    stop_worker: Callable[[], None] | None,
) -> None:
    """`stop_worker`: called once the seeded runs have finished (--runs-elsewhere)."""
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as http:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get("/health/ready") as ready:
                    if ready.status == 200:
                        break
            if time.monotonic() > deadline:
                raise SystemExit("`laminar server` was not ready within 120 s (see --logs)")
            await asyncio.sleep(0.1)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with http.post("/v1/tenants", json={"name": "bench"}, headers=admin):
            pass
        key_body = {"name": "b", "scope": "operate"}
        async with http.post("/v1/tenants/bench/keys", json=key_body, headers=admin) as answer:
            key = (await answer.json())["key"]
        auth = {"Authorization": f"Bearer {key}"}
        steps = [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop", "depends_on": ["a"]}]
        definition = {"name": "p", "steps": steps}
        async with http.post("/v1/pipelines", json={"definition": definition}, headers=auth):
            pass
        ids = []
        for _ in range(20):
            async with http.post("/v1/pipelines/p/runs", json={}, headers=auth) as answer:
                ids.append((await answer.json())["id"])
        reads = iter(range(10**9))

        async def call(method: str, path: str, **kwargs: object) -> int:
            async with http.request(method, path, headers=auth, **kwargs) as response:  # type: ignore[arg-type]
                await response.read()
                return response.status

        def read() -> Awaitable[int]:
            return call("GET", f"/v1/runs/{ids[next(reads) % len(ids)]}")

        def trigger() -> Awaitable[int]:
            return call("POST", "/v1/pipelines/p/runs", json={})

        def live() -> Awaitable[int]:
            return call("GET", "/health/live")

        for _ in range(100):  # warm-up
            await read()
        if stop_worker is not None:
            deadline = time.monotonic() + 60
            for run_id in ids:  # read runs that finished, as without the option
                while True:
                    async with http.get(f"/v1/runs/{run_id}", headers=auth) as answer:
                        if (await answer.json())["status"] == "SUCCEEDED":
                            break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"seeded run {run_id} did not finish within 60 s")
                    await asyncio.sleep(0.1)
            stop_worker()
        raw = raw_sql_read(database_url, ids)
        rows: list[Row] = []
        for load in args.load:
            reads_per_s, triggers_per_s = (float(x) for x in load.split("/"))
            began = cpu_seconds(server)
            floor = await open_loop(reads_per_s + triggers_per_s, args.seconds, live)
            rows.append(
                Row(
                    "GET /health/live (reference)",
                    reads_per_s + triggers_per_s,
                    floor,
                    None,
                    cpu_seconds(server) - began,
                )
            )
            began, histogram = cpu_seconds(server), await server_buckets(http)
            alone = await open_loop(reads_per_s, args.seconds, read)
            rows.append(
                Row(
                    "GET /v1/runs/{id} (alone)",
                    reads_per_s,
                    alone,
                    READ_TARGET_MS,
                    cpu_seconds(server) - began,
                    server_p99(histogram, await server_buckets(http), "GET", "/v1/runs/{run_id}"),
                )
            )
            began, histogram = cpu_seconds(server), await server_buckets(http)
            read_figures, trigger_figures = await asyncio.gather(
                open_loop(reads_per_s, args.seconds, read),
                open_loop(triggers_per_s, args.seconds, trigger),
            )
            both, after = cpu_seconds(server) - began, await server_buckets(http)
            rows += [
                Row(
                    "GET /v1/runs/{id}",
                    reads_per_s,
                    read_figures,
                    READ_TARGET_MS,
                    None,
                    server_p99(histogram, after, "GET", "/v1/runs/{run_id}"),
                ),
                Row(
                    "POST /v1/pipelines/p/runs",
                    triggers_per_s,
                    trigger_figures,
                    TRIGGER_TARGET_MS,
                    None,
                    server_p99(histogram, after, "POST", "/v1/pipelines/{name}/runs"),
                ),
            ]
            # The triggers' share of the server's CPU: what the mixed phase took beyond its reads.
            per_read = rows[-3].cpu_s / max(len(alone.latencies), 1)  # type: ignore[operator]
            rows[-1].cpu_s = both - per_read * len(read_figures.latencies)
            await asyncio.sleep(2)  # let the triggered runs drain before the next load
    print(
        f"\nAPI latency, open loop, {args.seconds:g} s per phase, PostgreSQL, "
        f"`laminar server --workers {args.workers}`, aiohttp client ({args.connections} "
        f"connections), {os.cpu_count()} cores, load average {args.load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
        + (
            "; the worker stopped after seeding (--runs-elsewhere): triggered runs wait in "
            "Temporal, their steps run nowhere on this machine"
            if args.runs_elsewhere
            else "; triggered runs run on a worker on this machine"
        )
    )
    print(
        "CPU ms/req is the figure that survives a shared machine; latencies there include "
        "waiting for the neighbours' processes"
    )
    print(
        f"raw SQL read of the same run row (psycopg, sequential): "
        f"p50 {statistics.median(raw) * 1000:.2f} ms, p99 {Figures(raw, 0).pct(99):.2f} ms"
    )
    print(
        "phases per load: reference alone, reads alone, reads + triggers together. "
        "'CPU ms/req': the server process's CPU time per request in that phase "
        "(triggers: the mixed phase's CPU beyond its reads); 'server p99': the bucket of the "
        "server's own latency histogram (/metrics) that holds its p99, arrival in the app to "
        "answer"
    )
    print(
        f"{'request':<31}{'rate/s':>7}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'errors':>7}"
        f"{'p99/ref':>9}{'CPU ms/req':>12}{'server p99':>12}  target"
    )
    reference = rows[0]
    for row in rows:
        if row.target is None:
            reference = row
        figures = row.figures
        verdict = (
            ""
            if row.target is None
            else f"p99 <= {row.target:g} ms: "
            + ("met" if figures.pct(99) <= row.target else "MISSED")
        )
        cpu = "" if row.cpu_s is None else f"{row.cpu_s / len(figures.latencies) * 1000:.2f}"
        print(
            f"{row.name:<31}{row.rate:>7g}{figures.p50:>9.1f}{figures.pct(90):>9.1f}"
            f"{figures.pct(99):>9.1f}{figures.errors:>7}"
            f"{figures.pct(99) / reference.figures.pct(99):>8.1f}x{cpu:>12}{row.server:>12}"
            f"  {verdict}"
        )


@dataclass
class Row:
    name: str
    rate: float
    figures: Figures
    target: float | None
    cpu_s: float | None
    server: str = ""


def raw_sql_read(url: str, ids: list[str], count: int = 500) -> list[float]:
    """The floor: one indexed read of a run row over one warm connection."""
    latencies = []
    with psycopg.connect(url) as conn:
        for i in range(count):
            began = time.perf_counter()
            conn.execute("SELECT * FROM runs WHERE public_id = %s", (ids[i % len(ids)],)).fetchone()
            latencies.append(time.perf_counter() - began)
    return latencies


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--load",
        action="append",
        help="READS/TRIGGERS per second; repeat for several loads (default 200/20)",
    )
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=1, help="`laminar server` processes")
    parser.add_argument("--connections", type=int, default=100, help="client connection limit")
    parser.add_argument(
        "--runs-elsewhere",
        action="store_true",
        help="stop the worker once the seeded runs finished: triggered runs then wait in "
        "Temporal, as when workers have nodes of their own (the API's cost alone)",
    )
    parser.add_argument("--logs", type=Path, help="copy the server's and worker's logs here")
    arguments = parser.parse_args()
    arguments.load = arguments.load or ["200/20"]
    asyncio.run(main(arguments))
