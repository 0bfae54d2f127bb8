"""Reading a Spark driver's output for heartbeat progress.

Spark's default log4j profile logs the DAG scheduler at INFO on stderr; those lines give jobs,
stages and task counts as they happen. A local driver also logs its UI port: from then on the
driver's REST API (steps/spark_rest.py) gives the same figures, and is preferred.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from steps.spark_rest import ui_port

_STAGE_SUBMITTED = re.compile(r"DAGScheduler: Submitting (\d+) missing tasks from \w+ (\d+) ")
_STAGE_FINISHED = re.compile(r"DAGScheduler: \w+Stage (\d+) \(.*\) finished in ")
_TASK_FINISHED = re.compile(
    r"TaskSetManager: Finished task \S+ in stage (\d+)\.\d+ .*\((\d+)/(\d+)\)$"
)
_JOB_STARTED = re.compile(r"DAGScheduler: Got (?:map stage )?job (\d+) ")
_JOB_FINISHED = re.compile(r"DAGScheduler: Job (\d+) finished")
_SQL_STATEMENT = re.compile(r"^laminar: statement (\d+)/(\d+)$")

# Failures that come out the same on every attempt: retrying cannot help.
DETERMINISTIC = (
    "AnalysisException",
    "ParseException",
    "ClassNotFoundException",
    "SyntaxError",
    "ModuleNotFoundError",
    "ImportError",
    "FileNotFoundException",
)


@dataclass
class SparkProgress:
    """What the driver has logged so far: jobs, stages and the running stage's tasks."""

    jobs_started: set[int] = field(default_factory=set)
    jobs_done: set[int] = field(default_factory=set)
    stages_submitted: set[int] = field(default_factory=set)
    stages_done: set[int] = field(default_factory=set)
    tasks: dict[int, tuple[int, int]] = field(default_factory=dict)
    """stage -> (tasks finished, tasks in the stage)."""
    statement: tuple[int, int] | None = None
    ui_port: int | None = None
    """The driver's UI port, once it logged it (local mode)."""
    rest: dict[str, Any] | None = None
    """The latest progress from the driver's REST API; preferred over the log's."""

    def feed(self, line: str) -> bool:
        """Take one output line; True when it changed the progress."""
        if self.ui_port is None and (port := ui_port(line)) is not None:
            self.ui_port = port
            return False
        if "DAGScheduler" in line:
            if m := _STAGE_SUBMITTED.search(line):
                stage = int(m[2])
                self.stages_submitted.add(stage)
                self.tasks.setdefault(stage, (0, int(m[1])))
                return True
            if m := _STAGE_FINISHED.search(line):
                self.stages_done.add(int(m[1]))
                return True
            if m := _JOB_STARTED.search(line):
                self.jobs_started.add(int(m[1]))
                return True
            if m := _JOB_FINISHED.search(line):
                self.jobs_done.add(int(m[1]))
                return True
        elif "TaskSetManager: Finished task" in line:
            if m := _TASK_FINISHED.search(line):
                self.tasks[int(m[1])] = (int(m[2]), int(m[3]))
                return True
        elif m := _SQL_STATEMENT.match(line):
            self.statement = (int(m[1]), int(m[2]))
            return True
        return False

    def details(self) -> dict[str, Any]:
        """Heartbeat details: `stages: "3/4"` is stages finished of those submitted so far;
        from the driver's REST API once it answered, else from the log."""
        running = sorted(self.stages_submitted - self.stages_done)
        out: dict[str, Any] = {
            "jobs": f"{len(self.jobs_done)}/{len(self.jobs_started)}",
            "stages": f"{len(self.stages_done)}/{len(self.stages_submitted)}",
        }
        if self.rest is not None:
            out = dict(self.rest)
        elif running:
            done, total = self.tasks.get(running[-1], (0, 0))
            out["running_stage"] = running[-1]
            out["tasks"] = f"{done}/{total}"
        if self.statement:
            out["statement"] = f"{self.statement[0]}/{self.statement[1]}"
        return out

    def summary(self) -> dict[str, Any]:
        return {"jobs": len(self.jobs_done), "stages": len(self.stages_done)}


def is_deterministic(lines: list[str]) -> bool:
    return any(name in line.split(":", 1)[0] for line in lines for name in DETERMINISTIC)
