"""Writes the `städte` output the pipeline declares, and a small JSON result."""

import csv
import json
import os

with open(os.environ["LAMINAR_CONTEXT"], encoding="utf-8") as f:
    context = json.load(f)
rows = [("Wien", 2_000_000), ("Graz", 300_000), ("Linz", 210_000)]
with open(context["outputs"]["städte"], "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["name", "people"])
    writer.writerows(rows)
with open(os.environ["LAMINAR_RESULT"], "w", encoding="utf-8") as f:
    json.dump({"rows": len(rows)}, f)
