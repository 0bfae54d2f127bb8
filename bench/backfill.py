"""Benchmark: a backfill of --days no-op daily runs at --max-concurrency: runs/s, and the peak
concurrency observed (sampled in the database every 20 ms; must be <= max_concurrency).

Reference, measured in the same run: the same number of runs triggered through the API by
--max-concurrency clients, each waiting for its run to finish before the next (the best a
script driving the API with the same concurrency does). For orientation: Dagster users report
about 1 run/s for backfills.

    .venv/bin/python bench/backfill.py [--days 365] [--max-concurrency 10] [--database sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scheduling_service import BenchService, bench_service
from sqlalchemy import func, select

from pipeline_service.db.models import Pipeline, Run

ACTIVE = ("QUEUED", "RUNNING", "RETRYING")


def definition(name: str) -> dict[str, object]:
    return {
        "name": name,
        "schedule": {"cron": "@daily", "timezone": "Europe/Berlin", "paused": True},
        "steps": [{"id": "a", "type": "noop"}],
    }


def active_runs(service: BenchService, pipeline: str) -> int:
    with service.sessions() as session:
        query = (
            select(func.count())
            .select_from(Run)
            .join(Pipeline, Pipeline.id == Run.pipeline_id)
            .where(Pipeline.name == pipeline, Run.status.in_(ACTIVE))
        )
        return int(session.scalar(query) or 0)


async def reference(service: BenchService, runs: int, clients: int) -> float:
    http = service.http
    await http.post("/v1/pipelines", json={"definition": definition("by-hand")})
    remaining = list(range(runs))

    async def client() -> None:
        while remaining:
            remaining.pop()
            run = (await http.post("/v1/pipelines/by-hand/runs", json={})).json()
            while run["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
                await asyncio.sleep(0.01)
                run = (await http.get(f"/v1/runs/{run['id']}")).json()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return runs / (time.perf_counter() - began)


async def main(args: argparse.Namespace) -> None:
    async with bench_service(args.database) as service:
        http = service.http
        await http.post("/v1/pipelines", json={"definition": definition("daily")})
        body = {
            "start": "2025-01-01",
            "end": f"{2025 + args.days // 365}-01-01" if args.days % 365 == 0 else None,
            "max_concurrency": args.max_concurrency,
        }
        if body["end"] is None:
            sys.exit("--days must be a multiple of 365")
        began = time.perf_counter()
        response = await http.post("/v1/pipelines/daily/backfills", json=body)
        assert response.status_code == 201, response.text
        backfill = response.json()["backfill_id"]
        peak = 0
        while True:
            peak = max(peak, active_runs(service, "daily"))
            progress = (await http.get(f"/v1/backfills/{backfill}")).json()
            if progress["state"] in ("COMPLETED", "CANCELLED"):
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - began
        ref = await reference(service, progress["counts"]["started"], args.max_concurrency)
    counts = progress["counts"]
    rate = counts["started"] / elapsed
    limit = args.max_concurrency
    seen = max(peak, progress["peak_in_flight"])
    print(f"backfill of {progress['total']} daily intervals, max_concurrency {limit}:")
    print(f"  database: {args.database}; {counts['started']} runs started, ", end="")
    print(f"{counts['succeeded']} succeeded in {elapsed:.1f} s: {rate:.1f} runs/s")
    print(f"  peak concurrency: {peak} observed in the database, ", end="")
    print(f"{progress['peak_in_flight']} in the workflow ", end="")
    print(f"(limit {limit}: {'kept' if seen <= limit else 'EXCEEDED'})")
    print(f"  reference: {args.max_concurrency} API clients, run after run: {ref:.1f} runs/s")
    print(f"  ratio (backfill / reference): {rate / ref:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--max-concurrency", type=int, default=10)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    asyncio.run(main(parser.parse_args()))
