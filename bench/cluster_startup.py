"""Benchmark: `laminar run` as a user starts it — time to the first step, total time, memory.

Runs `laminar run --once --no-ui` (or `--ui`) on a small SQL pipeline in a fresh state dir,
several times:
  - time from exec to the first step starting (the step records DuckDB's `now()`),
  - wall time of the whole command (start server, run, stop everything),
  - peak RSS of the laminar process and of its whole process tree (Temporal server included).
A resumed start (same state dir, second run) is measured too. Targets: first step <= 1.0 s,
whole command <= 2.0 s.

`--baseline DIR` also runs the code of another checkout (e.g. `git worktree add` or
`git archive` of an older commit) with this venv, taking turns with this one, for a
before/after in one sitting.

    .venv/bin/python bench/cluster_startup.py [--repeat 5] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
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


def one_run(
    state_dir: Path, pipeline: Path, ui: bool, code: Path | None = None
) -> tuple[float, float, int, int]:
    """(seconds to first step, total seconds, peak laminar RSS, peak tree RSS); `code`: run
    that checkout's Laminar instead of this one."""
    output = state_dir.with_suffix(".out")
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    began = time.time()
    command = [laminar(), "run", str(pipeline), "--once", "--ui" if ui else "--no-ui"]
    process = subprocess.Popen(
        [*command, "--state-dir", str(state_dir)],
        stdout=output.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
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


def main(repeat: int, ui: bool, baseline: Path | None) -> None:
    codes: dict[str, Path | None] = {"this": None}
    if baseline is not None:
        codes = {"baseline": baseline.resolve(), "this": None}
    rows: dict[tuple[str, str], list[tuple[float, float, int, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pipeline = root / "pipeline.yaml"
        pipeline.write_text(PIPELINE)
        for i in range(repeat):
            for name, code in codes.items():  # the checkouts take turns
                state = root / f"{name}-state{i}"
                rows.setdefault((name, "fresh"), []).append(one_run(state, pipeline, ui, code))
                rows.setdefault((name, "existing"), []).append(one_run(state, pipeline, ui, code))
    flags = "--once --ui" if ui else "--once --no-ui"
    print(f"\n`laminar run {flags}` on a 2-step SQL pipeline, {repeat} runs each: median (min-max)")
    print(
        f"{'code':<10}{'state dir':<10}{'to 1st step':>20}{'total':>20}"
        f"{'laminar RSS':>13}{'tree RSS':>11}"
    )
    for (name, start), runs in rows.items():
        first, total, own, tree = zip(*runs, strict=True)
        print(
            f"{name:<10}{start:<10}{_spread(first):>20}{_spread(total):>20}"
            f"{statistics.median(own) / 2**20:>9.0f} MiB{statistics.median(tree) / 2**20:>7.0f} MiB"
        )


def _spread(values: tuple[float, ...]) -> str:
    return f"{statistics.median(values):.2f}s ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ui", action="store_true", help="serve the Temporal UI too")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    arguments = parser.parse_args()
    main(arguments.repeat, arguments.ui, arguments.baseline)
