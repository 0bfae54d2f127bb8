"""Write a Markdown sales report from the CSV tables Laminar exported for this step.

Standard library only. Laminar passes everything through the environment:
LAMINAR_CONTEXT (run facts and input files), LAMINAR_OUTPUT_DIR, LAMINAR_RESULT.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path


def read_rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def table(rows: list[dict[str, str]], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--title", default="Sales report")
    args = parser.parse_args()

    context = json.loads(Path(os.environ["LAMINAR_CONTEXT"]).read_text())
    summary = read_rows(context["inputs"]["sales_summary"])
    products = read_rows(context["inputs"]["sales_by_product"])
    products.sort(key=lambda row: float(row["revenue"]), reverse=True)

    lines = [
        f"# {args.title}",
        "",
        f"Run `{context['run_id']}`, data interval {context['data_interval_start']} to "
        f"{context['data_interval_end']}.",
        "",
        "## By region",
        "",
        *table(summary, ["region", "orders", "units", "revenue", "revenue_share", "top_product"]),
        "",
        f"## By product (order lines with at least {os.environ['REPORT_MIN_QUANTITY']} units)",
        "",
        *table(products, ["product", "orders", "units", "revenue"]),
        "",
    ]
    report = Path(os.environ["LAMINAR_OUTPUT_DIR"]) / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {report} ({len(summary)} regions, {len(products)} products)")

    result = {"report": str(report.resolve()), "regions": len(summary)}
    Path(os.environ["LAMINAR_RESULT"]).write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
