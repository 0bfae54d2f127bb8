"""Laminar's Spark SQL driver: runs the statements of a `spark` step's `sql:` in order.

Started by spark-submit with the job file (shipped with `--files`) as its only argument. Needs
only pyspark and the standard library, because in cluster mode it runs in the Spark image.
Template values arrive as Spark named parameters (`:lam_0`), never as SQL text.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import date, datetime
from typing import Any

from pyspark import SparkFiles
from pyspark.sql import SparkSession

_SHOWN_ROWS = 20


def _value(typed: dict[str, Any]) -> Any:
    if typed["type"] == "date":
        return date.fromisoformat(typed["value"])
    if typed["type"] == "datetime":
        return datetime.fromisoformat(typed["value"])
    return typed["value"]


def main(job_name: str) -> None:
    spark = SparkSession.builder.getOrCreate()
    with open(SparkFiles.get(job_name)) as f:
        job = json.load(f)
    params = {name: _value(typed) for name, typed in job["params"].items()}
    statements = job["statements"]
    for number, statement in enumerate(statements, 1):
        used = {n: v for n, v in params.items() if re.search(rf":{re.escape(n)}\b", statement)}
        print(f"laminar: statement {number}/{len(statements)}", flush=True)
        frame = spark.sql(statement, args=used or None)
        if number == len(statements) and frame.columns:
            frame.show(_SHOWN_ROWS, truncate=False)  # the last result, for the step log
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
