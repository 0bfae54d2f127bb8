"""`laminar run` of the fan-out example: a list param given on the command line, one instance
per item, a report over the instances' results."""

from __future__ import annotations

from pathlib import Path

import duckdb

from tests.e2e.conftest import EXAMPLES, Cli


def test_regions_fan_out_example(cli: Cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = cli.run(
        "run",
        "--once",
        EXAMPLES / "regions_fan_out.yaml",
        "--no-ui",
        "--state-dir",
        state,
        "--param",
        "regions=eu,us,apac,latam,mea",
        timeout=300,
    )
    assert result.code == 0, result.details
    assert "Traceback" not in result.output
    for i in range(5):
        assert f"count_region[{i}]" in result.stdout
    assert "count_region.count = 5" in result.stdout
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as db:
        rows = db.sql("SELECT region, position FROM region_counts ORDER BY position").fetchall()
        report = db.sql("SELECT regions, instances FROM region_report").fetchall()
    assert rows == [("eu", 0), ("us", 1), ("apac", 2), ("latam", 3), ("mea", 4)]
    assert report == [(5, 5)]


def test_the_example_validates(cli: Cli) -> None:
    result = cli.run("validate", EXAMPLES / "regions_fan_out.yaml")
    assert result.code == 0, result.details
