"""Benchmark: `laminar run` as a user starts it — time to the first step, total time, memory.

Runs `laminar run --once --no-ui` (or `--ui`) on a small SQL pipeline in a fresh state dir,
several times:
  - time from exec to the first step starting (the step records DuckDB's `now()`),
  - wall time of the whole command (start server, run, stop everything),
  - peak RSS of the laminar process and of its whole process tree (Temporal server included).
A resumed start (same state dir, second run) is measured too.

    .venv/bin/python bench/cluster_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import psutil

PIPELINE = """
name: startup-bench
steps:
  - id: first
    type: sql
    sql: CREATE OR REPLACE TABLE started AS SELECT epoch_ms(now()) AS ms
  - id: second
    type: noop
    depends_on: [first]
"""


def laminar() -> str:
    return str(Path(sys.executable).with_name("laminar"))


def one_run(state_dir: Path, pipeline: Path, ui: bool) -> tuple[float, float, int, int]:
    """(seconds to first step, total seconds, peak laminar RSS, peak tree RSS)."""
    output = state_dir.with_suffix(".out")
    began = time.time()
    command = [laminar(), "run", str(pipeline), "--once", "--ui" if ui else "--no-ui"]
    process = subprocess.Popen(
        [*command, "--state-dir", str(state_dir)],
        stdout=output.open("wb"),
        stderr=subprocess.STDOUT,
    )
    parent = psutil.Process(process.pid)
    peak_self = peak_tree = 0
    while process.poll() is None:
        try:
            own = parent.memory_info().rss
            tree = own + sum(c.memory_info().rss for c in parent.children(recursive=True))
        except psutil.Error:
            own = tree = 0
        peak_self, peak_tree = max(peak_self, own), max(peak_tree, tree)
        time.sleep(0.02)
    total = time.time() - began
    if process.returncode != 0:
        raise SystemExit(f"laminar run exited {process.returncode}:\n{output.read_text()}")
    with duckdb.connect(str(state_dir / "warehouse.duckdb"), read_only=True) as con:
        row = con.execute("SELECT ms FROM started").fetchone()
    assert row is not None
    return row[0] / 1000 - began, total, peak_self, peak_tree


def main(repeat: int, ui: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pipeline = root / "pipeline.yaml"
        pipeline.write_text(PIPELINE)
        fresh, again = [], []
        for i in range(repeat):
            state = root / f"state{i}"
            fresh.append(one_run(state, pipeline, ui))
            again.append(one_run(state, pipeline, ui))
    flags = "--once --ui" if ui else "--once --no-ui"
    print(f"\n`laminar run {flags}` on a 2-step SQL pipeline, {repeat} runs each (median)")
    print(f"{'start':<22}{'to 1st step':>12}{'total':>9}{'laminar RSS':>13}{'tree RSS':>11}")
    for name, rows in (("fresh state dir", fresh), ("existing state dir", again)):
        first, total, own, tree = (statistics.median(col) for col in zip(*rows, strict=True))
        print(
            f"{name:<22}{first:>11.2f}s{total:>8.2f}s"
            f"{own / 2**20:>10.0f} MiB{tree / 2**20:>8.0f} MiB"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ui", action="store_true", help="serve the Temporal UI too")
    arguments = parser.parse_args()
    main(arguments.repeat, arguments.ui)
