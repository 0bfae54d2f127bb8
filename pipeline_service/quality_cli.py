"""`laminar quality history`: a check's results across runs of a pipeline cluster.

Quality steps append every check's outcome to `<quarantine_schema>.check_results` in the
engine they ran on; for `laminar run` that is the DuckDB warehouse in the state directory,
read here read-only (so not while that pipeline's `laminar run` holds it open).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlglot import exp

app = typer.Typer(help="Data-quality results kept by quality steps.", no_args_is_help=True)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


@app.command()
def history(
    pipeline: Annotated[
        Path | None,
        typer.Argument(help="Pipeline file: look in its default state directory."),
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="The pipeline's state directory (as for `run`).")
    ] = None,
    check: Annotated[str | None, typer.Option(help="Only this check.")] = None,
    step: Annotated[str | None, typer.Option(help="Only this quality step.")] = None,
    schema: Annotated[str, typer.Option(help="The steps' quarantine_schema.")] = "quarantine",
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Most recent N results.")] = 50,
) -> None:
    """Show check results, newest first: status, failing rows, observed value, threshold."""
    import duckdb  # here, not at import: every `laminar` command loads this module

    from pipeline_service.cluster import WAREHOUSE

    if state_dir is None:
        state_dir = _default_state_dir(pipeline)
    warehouse = state_dir / WAREHOUSE
    if not warehouse.is_file():
        errors.print(f"no warehouse at {warehouse}: is this a pipeline's state directory?")
        raise typer.Exit(2)
    results = exp.Table(
        this=exp.to_identifier("check_results", quoted=True),
        db=exp.to_identifier(schema, quoted=True),
    )
    query = exp.select(
        "checked_at", "run_id", "step_id", "check_name", "severity", "status", "failing_rows",
        "observed", "threshold",
    ).from_(results)  # fmt: skip
    params: list[str | int] = []
    for column, value in (("check_name", check), ("step_id", step)):
        if value is not None:
            query = query.where(exp.EQ(this=exp.column(column), expression=exp.Placeholder()))
            params.append(value)
    query = query.order_by("checked_at DESC").limit(exp.Placeholder())
    params.append(limit)
    try:
        with duckdb.connect(str(warehouse), read_only=True) as connection:
            rows = connection.execute(query.sql(dialect="duckdb"), params).fetchall()
    except duckdb.CatalogException:
        errors.print(f"no quality results in {warehouse} (schema {schema!r})")
        raise typer.Exit(2) from None
    except duckdb.IOException as exc:
        errors.print(f"cannot open {warehouse}: {exc} (is `laminar run` still using it?)")
        raise typer.Exit(2) from None
    table = Table("checked at", "run", "step", "check", "severity", "status", "failing rows",
                  "observed", "threshold")  # fmt: skip
    colours = {"passed": "green", "warned": "yellow", "failed": "red"}
    for at, run, step_id, name, severity, status, failing, observed, threshold in rows:
        table.add_row(
            at, run, step_id, name, severity, f"[{colours.get(status, 'white')}]{status}[/]",
            "" if failing is None else str(failing), _short(observed), _short(threshold),
        )  # fmt: skip
    console.print(table)
    if not rows:
        console.print("no results match")


def _short(text: str | None) -> str:
    if text is None:
        return ""
    value = json.loads(text)
    shown = value if isinstance(value, str) else json.dumps(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _default_state_dir(pipeline: Path | None) -> Path:
    """Where `laminar run PIPELINE` keeps its state when given no --state-dir."""
    from pipeline_service.settings import default_state_root
    from schemas.loading import PipelineValidationError, load_pipeline_file

    if pipeline is None:
        errors.print("give a pipeline file or --state-dir")
        raise typer.Exit(2)
    try:
        name = load_pipeline_file(pipeline).name
    except (OSError, PipelineValidationError) as exc:
        errors.print(f"cannot read pipeline {pipeline}: {exc}")
        raise typer.Exit(2) from None
    return default_state_root() / name
