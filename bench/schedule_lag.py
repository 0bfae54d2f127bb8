"""Benchmark: schedule lag, from a fire time to the run's RUNNING, over --fires fires.

A pipeline (one no-op step) fires every second (`* * * * * *`, Europe/Berlin, overlap
allow_all); a fire's time is the end of its run's data interval, the run's RUNNING time is
`started_at` as recorded by the worker. Reference, measured in the same run: a manual trigger
(POST /v1/pipelines/{name}/runs) to RUNNING, --fires times. Target: p99 <= 1 s.

    .venv/bin/python bench/schedule_lag.py [--fires 100] [--database sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scheduling_service import bench_service, pct
from sqlalchemy import select

from pipeline_service.db.models import Run

DEFINITION = {
    "name": "lag",
    "schedule": {"cron": "* * * * * *", "timezone": "Europe/Berlin", "overlap": "allow_all"},
    "steps": [{"id": "a", "type": "noop"}],
}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


async def main(args: argparse.Namespace) -> None:
    async with bench_service(args.database) as service:
        http = service.http
        manual = {**DEFINITION, "name": "manual", "schedule": None}
        assert (await http.post("/v1/pipelines", json={"definition": manual})).status_code == 201
        reference: list[float] = []
        for _ in range(args.fires):
            sent = datetime.now(UTC)
            run = (await http.post("/v1/pipelines/manual/runs", json={})).json()
            while True:
                body = (await http.get(f"/v1/runs/{run['id']}")).json()
                if body["started_at"]:
                    break
                await asyncio.sleep(0.005)
            reference.append((datetime.fromisoformat(body["started_at"]) - sent).total_seconds())

        began = datetime.now(UTC)
        assert (
            await http.post("/v1/pipelines", json={"definition": DEFINITION})
        ).status_code == 201
        deadline = time.monotonic() + args.fires * 2 + 30
        lags: list[float] = []
        recorded: list[float] = []
        while time.monotonic() < deadline:
            with service.sessions() as session:
                rows = session.execute(
                    select(Run.logical_date, Run.started_at, Run.created_at)
                    .where(Run.trigger == "schedule", Run.started_at.is_not(None))
                    .order_by(Run.logical_date)
                ).all()
            if len(rows) >= args.fires:
                lags = [
                    (started - (logical + timedelta(seconds=1))).total_seconds()
                    for logical, started, _ in rows[: args.fires]
                ]
                recorded = [
                    (created - (logical + timedelta(seconds=1))).total_seconds()
                    for logical, _, created in rows[: args.fires]
                ]
                break
            await asyncio.sleep(0.5)
        await http.post("/v1/pipelines/lag/schedule/pause")
    if not lags:
        sys.exit("the schedule did not fire often enough")
    p50, p99 = pct(lags, 50), pct(lags, 99)
    ref50, ref99 = pct(reference, 50), pct(reference, 99)
    print(f"schedule lag over {len(lags)} fires ({args.database}), since {began:%H:%M:%S}Z:")
    print(f"  fire -> RUNNING    p50 {ms(p50)}  p99 {ms(p99)}  max {ms(max(lags))}")
    print(f"  fire -> recorded   p50 {ms(pct(recorded, 50))}  p99 {ms(pct(recorded, 99))}")
    print(f"  reference: manual trigger -> RUNNING  p50 {ms(ref50)}  p99 {ms(ref99)}")
    print(f"  ratio (schedule / manual): p50 {p50 / ref50:5.2f}x   p99 {p99 / ref99:5.2f}x")
    print(f"  target p99 <= 1000 ms: {'met' if p99 <= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fires", type=int, default=100)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    asyncio.run(main(parser.parse_args()))
