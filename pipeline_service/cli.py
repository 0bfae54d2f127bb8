"""The `laminar` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from schemas.loading import (
    PipelineValidationError,
    load_pipeline_file,
    load_pipeline_text,
    resolve_params,
    validate_pipeline,
)
from schemas.pipeline import PipelineDefinition
from workflows import dag

app = typer.Typer(
    name="laminar",
    help="Laminar: durable pipelines of SQL, Python, Spark and Flink steps on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2


def _fail(title: str, problems: list[str]) -> typer.Exit:
    errors.print(f"[bold red]{title}[/]", highlight=False)
    for problem in problems:
        errors.print(f"  {problem}", highlight=False, markup=False)
    return typer.Exit(EXIT_BAD_INPUT)


def _parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0].strip()]
    if bad:
        raise _fail("bad --param (expected key=value):", bad)
    for pair in pairs:
        key, value = pair.split("=", 1)
        params[key.strip()] = value
    return params


def _sql_pipeline(sql: str, name: str | None, source_dir: Path) -> PipelineDefinition:
    data = {"name": name or "sql", "steps": [{"id": "sql", "type": "sql", "sql": sql}]}
    return validate_pipeline(data, source_dir=source_dir)


def _load_source(
    pipeline: str | None, sql: str | None, sql_file: Path | None, name: str | None
) -> tuple[PipelineDefinition, Path]:
    """The pipeline from a file, stdin (`-`), --sql, --sql-file or LAMINAR_SQL."""
    given = [x for x in (pipeline, sql, sql_file) if x is not None]
    if len(given) > 1:
        raise _fail("give only one of: a pipeline file (or -), --sql, --sql-file", [])
    cwd = Path.cwd().resolve()
    if pipeline == "-":
        text = sys.stdin.read()
        fmt = "json" if text.lstrip().startswith("{") else "yaml"
        definition = load_pipeline_text(text, source_dir=cwd, fmt=fmt)
        source_dir = cwd
    elif pipeline is not None:
        path = Path(pipeline)
        if not path.is_file():
            raise _fail(f"no such pipeline file: {pipeline}", [])
        definition = load_pipeline_file(path)
        source_dir = path.resolve().parent
    elif sql_file is not None:
        if not sql_file.is_file():
            raise _fail(f"no such SQL file: {sql_file}", [])
        definition = _sql_pipeline(sql_file.read_text(), name or sql_file.stem, sql_file.parent)
        source_dir = sql_file.resolve().parent
    elif sql is not None:
        definition, source_dir = _sql_pipeline(sql, name, cwd), cwd
    else:
        raise _fail(
            "nothing to run: give a pipeline file, - (stdin), --sql or --sql-file "
            "(or set LAMINAR_SQL)",
            [],
        )
    if name and definition.name != name:
        definition = validate_pipeline(
            {**definition.model_dump(mode="json"), "name": name}, source_dir=source_dir
        )
    return definition, source_dir


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="Pipeline definition (YAML or JSON).")],
) -> None:
    """Check a pipeline definition; print every problem with its path, or a summary."""
    if not file.is_file():
        raise _fail(f"no such file: {file}", [])
    try:
        pipeline = load_pipeline_file(file)
    except PipelineValidationError as exc:
        errors.print(f"[bold red]{file}: {len(exc.problems)} problem(s)[/]", highlight=False)
        for problem in exc.problems:
            errors.print(f"  {problem}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    levels = dag.levels(dag.dependencies(pipeline.steps))
    console.print(
        f"[green]{file}: pipeline '{pipeline.name}' is valid[/]: {len(pipeline.steps)} steps "
        f"in {len(levels)} levels",
        highlight=False,
    )
    for i, level in enumerate(levels, 1):
        console.print(f"  level {i}: {', '.join(level)}", highlight=False)


@app.command()
def run(
    pipeline: Annotated[
        str | None, typer.Argument(help="Pipeline file (YAML/JSON), or - to read stdin.")
    ] = None,
    sql: Annotated[str | None, typer.Option(help="Run this SQL as a one-step pipeline.")] = None,
    sql_file: Annotated[Path | None, typer.Option(help="Run this SQL file.")] = None,
    name: Annotated[str | None, typer.Option(help="Pipeline name (overrides the file's).")] = None,
    parallelism: Annotated[
        int | None, typer.Option(help="Most steps running at once (overrides max_parallelism).")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="State directory (default: user data dir).")
    ] = None,
    force: Annotated[
        bool | None, typer.Option("--force", help="Discard a state dir of another pipeline.")
    ] = None,
    once: Annotated[
        bool | None,
        typer.Option("--once", help="Run one execution and exit: 0 succeeded, 1 failed."),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Run parameter key=value.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file with the same keys as these options.")
    ] = None,
    ui: Annotated[bool | None, typer.Option("--ui/--no-ui", help="Serve the Temporal UI.")] = None,
) -> None:
    """Run a pipeline on an embedded stack (Temporal dev server + worker), resuming if needed."""
    from pydantic_settings import SettingsError

    from pipeline_service.cluster import ClusterError, ClusterOptions, run_cluster
    from pipeline_service.settings import (
        ConfigFileError,
        default_state_root,
        load_run_settings,
    )
    from pipeline_service.temporal.dev_server import DevServerError

    if config is not None and not config.is_file():
        raise _fail(f"no such config file: {config}", [])
    try:
        settings = load_run_settings(
            config,
            state_dir=state_dir,
            name=name,
            sql=sql,
            sql_file=sql_file,
            parallelism=parallelism,
            force=force,
            once=once,
            ui=ui,
        )
    except ValidationError as exc:
        raise _fail("bad settings:", [_settings_problem(e) for e in exc.errors()]) from None
    except ConfigFileError as exc:
        raise _fail(str(exc), []) from None
    except SettingsError as exc:  # e.g. LAMINAR_PARAMS that is not JSON
        raise _fail("bad settings:", [str(exc)]) from None
    # A source named on the command line beats LAMINAR_SQL / a config file's sql or sql_file.
    from_cli = pipeline is not None or sql is not None or sql_file is not None
    sql_text = sql if from_cli else settings.sql
    sql_path = sql_file if from_cli else settings.sql_file
    overrides: dict[str, Any] = {**settings.params, **_parse_params(param or [])}
    try:
        definition, source_dir = _load_source(pipeline, sql_text, sql_path, settings.name)
        params = resolve_params(definition, overrides)
    except PipelineValidationError as exc:
        raise _fail(
            f"pipeline is not valid ({len(exc.problems)} problem(s)):",
            [str(p) for p in exc.problems],
        ) from None
    options = ClusterOptions(
        state_dir=(settings.state_dir or default_state_root() / definition.name).resolve(),
        force=settings.force,
        once=settings.once,
        parallelism=settings.parallelism,
        params=params,
        ui=settings.ui,
        startup_timeout=settings.startup_timeout,
        shutdown_grace=settings.shutdown_grace,
    )
    try:
        code = run_cluster(definition, source_dir, options, console)
    except (ClusterError, DevServerError) as exc:
        raise _fail(str(exc), []) from None
    raise typer.Exit(code)


def _settings_problem(error: Any) -> str:
    path = ".".join(str(part) for part in error.get("loc", ()))
    return f"{path}: {error.get('msg')}"


def main() -> None:
    """Entry point: expected problems exit 2 with a message; the unexpected get one line too."""
    try:
        app()
    except Exception as exc:  # the last boundary: a user sees a message, not a stack trace
        if os.environ.get("LAMINAR_DEBUG"):
            raise
        errors.print(
            f"[bold red]laminar: internal error:[/] {type(exc).__name__}: {exc}\n"
            "  (set LAMINAR_DEBUG=1 for the traceback)",
            highlight=False,
        )
        sys.exit(3)
