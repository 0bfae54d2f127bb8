"""Render examples/compute_engines.yaml's report with `tabulate`, a package Laminar itself does
not have: the step declares it under `requirements:` and runs in its own virtualenv."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from tabulate import tabulate

context = json.loads(Path(os.environ["LAMINAR_CONTEXT"]).read_text())
with open(context["inputs"]["engine_report"], newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
report = Path(os.environ["LAMINAR_OUTPUT_DIR"]) / "engine_report.md"
report.write_text(tabulate(rows, headers="keys", tablefmt="github") + "\n")
print(report.read_text())
Path(os.environ["LAMINAR_RESULT"]).write_text(
    json.dumps({"report": str(report), "rows": len(rows)})
)
