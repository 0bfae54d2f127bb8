"""Benchmark: a Spark step run by Laminar vs the same spark-submit run directly.

The job is a PySpark aggregation over generated rows on `local[2]`. The harness (one-step
pipeline end to end vs the exact spark-submit command line Laminar generated, started the same
way, sides alternating per round) is bench/engine_overhead.py. Target: laminar <= 1.05 x direct
+ 1 s (medians).

    .venv/bin/python bench/spark_overhead.py [--repeat 5] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.engine_overhead import measure, report
from schemas.loading import validate_pipeline
from steps.spark import SparkExecutor

JOB = """\
import sys
from pyspark.sql import SparkSession

spark = SparkSession.builder.getOrCreate()
rows, out = int(sys.argv[1]), sys.argv[2]
frame = spark.range(rows).selectExpr("id % 97 AS k", "id * 2 AS v")
frame.groupBy("k").sum("v").write.mode("overwrite").parquet(out)
spark.stop()
"""


async def main(repeat: int, rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "job.py").write_text(JOB)
        definition = validate_pipeline(
            {
                "name": "spark_bench",
                "steps": [
                    {
                        "id": "agg",
                        "type": "spark",
                        "application": "job.py",
                        "args": [str(rows), str(root / "out")],
                        "heartbeat_timeout": "30s",
                    }
                ],
            },
            source_dir=root,
        )
        (root / "direct").mkdir()
        env = SparkExecutor()._environment(root / "direct")
        laminar, direct = await measure(
            root, definition, lambda _step_dir: (env, root / "direct"), repeat
        )
    report(f"PySpark aggregation over {rows} rows, local[2]", laminar, direct)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    asyncio.run(main(args.repeat, args.rows))
