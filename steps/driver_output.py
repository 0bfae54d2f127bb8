"""Exception headlines in the output of a JVM or Python driver (spark-submit, `flink run`)."""

from __future__ import annotations

import re

# `pkg.Name: message`, `Exception in thread "main" x.Y: ...`, `Caused by: ...`. Log lines start
# with a date, stack frames with whitespace or "at": neither matches.
_EXCEPTION = re.compile(
    r"^(?:Exception in thread \"[^\"]*\" |Caused by: |: )?"
    r"((?:[A-Za-z_][\w$]*\.)*[A-Za-z_][\w$]*(?:Exception|Error|Exit|Interrupt))(?::\s?(.*))?$"
)
MAX_ERROR_LINES = 6
_MAX_LINE = 500


def exception_lines(text: str) -> list[str]:
    """The exception headlines in a driver's output, root cause last, without repeats."""
    found: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not _EXCEPTION.match(line):
            continue
        line = line.removeprefix("Caused by: ").removeprefix(": ")  # ": " starts py4j's
        line = line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 3] + "..."
        if line in found:
            found.remove(line)
        found.append(line)
    return found[-MAX_ERROR_LINES:]
