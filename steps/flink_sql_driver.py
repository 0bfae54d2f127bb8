"""Laminar's Flink SQL driver: submits the statements of a `flink` step to a session cluster.

Run by the Flink executor with the PyFlink Table API from the Flink tool directory on its
path, and the job file as its only argument. Each statement that starts a job prints
`laminar: job <id>` so the executor can follow the job through the cluster's REST API. In
batch mode the driver waits for each job before the next statement (a later statement may read
what an earlier one wrote); in streaming mode it exits once the jobs are submitted.
"""

from __future__ import annotations

import json
import sys

from pyflink.common import Configuration
from pyflink.table import EnvironmentSettings, TableEnvironment


def main(job_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    config = Configuration()
    for key, value in job["config"].items():
        config.set_string(key, value)
    builder = EnvironmentSettings.new_instance().with_configuration(config)
    batch = job["mode"] == "batch"
    settings = (builder.in_batch_mode() if batch else builder.in_streaming_mode()).build()
    env = TableEnvironment.create(settings)
    statements = job["statements"]
    for number, statement in enumerate(statements, 1):
        print(f"laminar: statement {number}/{len(statements)}", flush=True)
        env.get_config().set("pipeline.name", f"{job['job_name']}-{number}")
        result = env.execute_sql(statement)
        client = result.get_job_client()
        if client is None:
            continue  # DDL, SET, USE: done at once
        print(f"laminar: job {client.get_job_id()}", flush=True)
        if batch and not _is_dml(statement):
            result.print()  # a query: its rows go to the step log
        elif batch:
            result.wait()


def _is_dml(statement: str) -> bool:
    head = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
    return head in ("INSERT", "EXECUTE", "BEGIN")


if __name__ == "__main__":
    main(sys.argv[1])
