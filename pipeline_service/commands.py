"""The `laminar` commands (typer). `pipeline_service.cli` is the entry point that loads them."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.console import Console

from pipeline_service.quality_cli import app as quality_app
from schemas.documents import MAX_DOCUMENT_BYTES
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


def _add_storage_commands() -> None:
    from pipeline_service.storage_commands import checkpoint_app, storage_app

    app.add_typer(checkpoint_app, name="checkpoint")
    app.add_typer(storage_app, name="storage")


_add_storage_commands()
errors = Console(stderr=True, soft_wrap=True)
app.add_typer(quality_app, name="quality")

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


def _read_text(path: Path, what: str) -> str:
    """A user's file as text, or a clear exit-2 message saying what is wrong with it."""
    if path.is_dir():
        raise _fail(f"{path} is a directory, not a {what}", [])
    if not path.exists():
        raise _fail(f"no such {what}: {path}", [])
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_DOCUMENT_BYTES + 1)
        if len(raw) > MAX_DOCUMENT_BYTES:  # it travels in the run's input: keep it small
            raise _fail(f"{what} {path} is larger than 1 MiB", [])
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(
            f"{what[0].upper()}{what[1:]} {path} is not UTF-8 text "
            f"(bad byte at offset {exc.start})",
            [],
        ) from None
    except OSError as exc:
        raise _fail(f"cannot read {what} {path}: {exc.strerror or exc}", []) from None


def name_from_file(stem: str) -> str:
    """A valid pipeline name from a file name: lowercase, `_` for anything else."""
    name = re.sub(r"[^a-z0-9_\-]", "_", stem.lower()).lstrip("_-")[:63]
    return name or "sql"


def _read_pipeline(pipeline: str) -> tuple[PipelineDefinition, Path]:
    """A definition from a file or stdin (`-`); PipelineValidationError lists its problems."""
    cwd = Path.cwd().resolve()
    if pipeline == "-":
        try:
            text = sys.stdin.buffer.read().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _fail(f"stdin is not UTF-8 text (bad byte at offset {exc.start})", []) from None
        fmt: Literal["yaml", "json"] = "json" if text.lstrip().startswith("{") else "yaml"
        return load_pipeline_text(text, source_dir=cwd, fmt=fmt), cwd
    path = Path(pipeline)
    if path.is_dir():
        raise _fail(f"{path} is a directory, not a pipeline file", [])
    if not path.exists():
        raise _fail(f"no such pipeline file: {pipeline}", [])
    return load_pipeline_file(path), path.resolve().parent


def _load_source(
    pipeline: str | None, sql: str | None, sql_file: Path | None, name: str | None
) -> tuple[PipelineDefinition, Path]:
    """The pipeline from a file, stdin (`-`), --sql, --sql-file or LAMINAR_SQL."""
    given = [x for x in (pipeline, sql, sql_file) if x is not None]
    if len(given) > 1:
        raise _fail("give only one of: a pipeline file (or -), --sql, --sql-file", [])
    cwd = Path.cwd().resolve()
    if pipeline is not None:
        definition, source_dir = _read_pipeline(pipeline)
    elif sql_file is not None:
        text = _read_text(sql_file, "SQL file")
        derived = name or name_from_file(sql_file.stem)
        if not name and derived != sql_file.stem:
            errors.print(
                f"pipeline name '{derived}' (from the file name {sql_file.name}; "
                "--name sets another)",
                highlight=False,
                markup=False,
            )
        source_dir = sql_file.resolve().parent
        definition = _sql_pipeline(text, derived, source_dir)
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
    file: Annotated[
        str, typer.Argument(help="Pipeline definition (YAML or JSON), or - for stdin.")
    ],
) -> None:
    """Check a pipeline definition; print every problem with its path, or a summary.

    Exits 0 when it is valid and 2 when it is not (1 is kept for "the run failed")."""
    try:
        pipeline, _ = _read_pipeline(file)
    except PipelineValidationError as exc:
        raise _fail(
            f"{file}: {len(exc.problems)} problem(s)", [str(p) for p in exc.problems]
        ) from None
    _print_valid(file, pipeline)


def _print_valid(label: str, pipeline: PipelineDefinition) -> None:
    levels = dag.levels(dag.dependencies(pipeline.steps))
    console.print(
        f"[green]{label}: pipeline '{pipeline.name}' is valid[/]: {len(pipeline.steps)} steps "
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
    # Paths as text: typer would turn an empty value into Path("."), the current directory.
    sql_file: Annotated[str | None, typer.Option(help="Run this SQL file.")] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Pipeline name (overrides the file's).")
    ] = None,
    parallelism: Annotated[
        int | None, typer.Option(help="Most steps running at once (overrides max_parallelism).")
    ] = None,
    state_dir: Annotated[
        str | None,
        typer.Option(
            "--state-dir",
            "-s",
            help="State directory, or s3:// gs:// az:// file:// URL (default: user data dir).",
        ),
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
    http_port: Annotated[
        int | None,
        typer.Option(help="Serve the Laminar API here (127.0.0.1), as `laminar server` does."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve /metrics on this port too (with --http-port).")
    ] = None,
    kafka: Annotated[
        str | None,
        typer.Option(
            metavar="BOOTSTRAP",
            help="Relay lifecycle events to Kafka: host:port,... or `embedded` (an in-memory "
            "test broker started here).",
        ),
    ] = None,
    s3_endpoint: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint URL for s3:// state.")
    ] = None,
    checkpoint_interval: Annotated[
        str | None,
        typer.Option(help="Remote state: at most one checkpoint per this (10s; 0: every step)."),
    ] = None,
    restore_from: Annotated[
        str | None, typer.Option(help="Remote state: start from this checkpoint id.")
    ] = None,
    restore_latest: Annotated[
        bool,
        typer.Option("--restore-latest", help="Remote state: start from the latest (default)."),
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(help="text (default; the live table on a terminal) or json (JSON lines)."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info (default), warning or error.")
    ] = None,
    log_file: Annotated[str | None, typer.Option(help="Also write the logs to this file.")] = None,
    sql_env: Annotated[
        str | None,
        typer.Option(metavar="VAR", help="Run the SQL held by environment variable VAR."),
    ] = None,
    validate_only: Annotated[
        bool, typer.Option("--validate", help="Only validate (as `laminar validate`); no run.")
    ] = False,
    logical_date: Annotated[
        str | None,
        typer.Option(help="Date this run is for (2026-11-23 or ISO date-time); reruns resume."),
    ] = None,
    latest_interval: Annotated[
        bool,
        typer.Option(
            "--latest-interval", help="Date the run by the latest complete interval of its cron."
        ),
    ] = False,
) -> None:
    """Run a pipeline on an embedded stack (Temporal dev server + worker), resuming if needed."""
    arguments = dict(locals())  # all the options, for _run
    from pipeline_service.cluster_logging import json_output

    fmt = (log_format or os.environ.get("LAMINAR_LOG_FORMAT") or "text").strip().lower()
    if fmt not in ("text", "json"):
        raise _fail(f"--log-format must be text or json, not {fmt!r}", [])
    level = (log_level or os.environ.get("LAMINAR_LOG_LEVEL") or "info").strip().lower()
    output = json_output(console, errors, level) if fmt == "json" else contextlib.nullcontext()
    with output:
        _run(**arguments)


def _run(
    pipeline: str | None,
    sql: str | None,
    sql_file: str | None,
    name: str | None,
    parallelism: int | None,
    state_dir: str | None,
    force: bool | None,
    once: bool | None,
    param: list[str] | None,
    config: Path | None,
    ui: bool | None,
    http_port: int | None,
    metrics_port: int | None,
    kafka: str | None,
    s3_endpoint: str | None,
    checkpoint_interval: str | None,
    restore_from: str | None,
    restore_latest: bool,
    log_format: str | None,
    log_level: str | None,
    log_file: str | None,
    sql_env: str | None,
    validate_only: bool,
    logical_date: str | None,
    latest_interval: bool,
) -> None:
    """`laminar run` once its output (text or JSON lines) is set up."""
    from pydantic_settings import SettingsError

    from pipeline_service.cluster import ClusterError, ClusterOptions, run_cluster
    from pipeline_service.cluster_dates import LogicalDateError
    from pipeline_service.cluster_options import dated_interval, state_location
    from pipeline_service.settings import (
        ConfigFileError,
        load_run_settings,
        unknown_env_warnings,
    )
    from pipeline_service.temporal.dev_server import DevServerError

    for warning in unknown_env_warnings():
        errors.print(f"warning: {warning}", highlight=False, markup=False)
    if config is not None:
        _read_text(config, "config file")  # exists, is a file, is text
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
            http_port=http_port,
            metrics_port=metrics_port,
            kafka=kafka,
            s3_endpoint=s3_endpoint,
            checkpoint_interval=checkpoint_interval,
            restore_from=None if restore_latest else restore_from,
            log_format=log_format,
            log_level=log_level,
            log_file=log_file,
        )
    except ValidationError as exc:
        raise _fail("bad settings:", [_settings_problem(e) for e in exc.errors()]) from None
    except ConfigFileError as exc:
        raise _fail(str(exc), []) from None
    except SettingsError as exc:  # e.g. LAMINAR_PARAMS that is not JSON
        raise _fail("bad settings:", [str(exc)]) from None
    if sql_env is not None:
        if sql is not None:
            raise _fail("give only one of: --sql, --sql-env", [])
        sql = os.environ.get(sql_env)
        if sql is None or not sql.strip():
            raise _fail(f"--sql-env {sql_env}: the environment variable is not set or empty", [])
    # A source named on the command line beats LAMINAR_SQL / a config file's sql or sql_file.
    from_cli = pipeline is not None or sql is not None or sql_file is not None
    sql_text = sql if from_cli else settings.sql
    sql_path = Path(sql_file) if sql_file is not None else None
    sql_path = sql_path if from_cli else settings.sql_file
    overrides: dict[str, Any] = {**settings.params, **_parse_params(param or [])}
    label = pipeline or (
        str(sql_path) if sql_path else f"--sql-env {sql_env}" if sql_env else "--sql"
    )
    try:
        definition, source_dir = _load_source(pipeline, sql_text, sql_path, settings.name)
        if validate_only:
            _print_valid(label, definition)
            raise typer.Exit(0)
        params = resolve_params(definition, overrides)
    except PipelineValidationError as exc:
        if validate_only:
            raise _fail(
                f"{label}: {len(exc.problems)} problem(s)", [str(p) for p in exc.problems]
            ) from None
        raise _fail(
            f"pipeline is not valid ({len(exc.problems)} problem(s)):",
            [str(p) for p in exc.problems],
        ) from None
    _check_resources()
    if restore_latest and restore_from:
        raise _fail("give only one of --restore-from and --restore-latest", [])
    if logical_date is not None and latest_interval:
        raise _fail("give only one of --logical-date and --latest-interval", [])
    try:
        interval = dated_interval(definition, logical_date, latest_interval)
    except LogicalDateError as exc:
        raise _fail(str(exc), []) from None
    state_path, remote = state_location(settings, definition.name)
    options = ClusterOptions(
        interval=interval,
        artifact_url=settings.artifact_url,
        s3_endpoint=settings.s3_endpoint,
        state_dir=state_path,
        remote=remote,
        force=settings.force,
        once=settings.once,
        parallelism=settings.parallelism,
        params=params,
        ui=settings.ui,
        startup_timeout=settings.startup_timeout,
        shutdown_grace=settings.shutdown_grace,
        http_port=settings.http_port,
        metrics_port=settings.metrics_port,
        kafka=settings.kafka,
        log_format=settings.log_format,
        log_level=settings.log_level,
        log_file=settings.log_file,
    )
    if options.metrics_port is not None and options.http_port is None:
        raise _fail("--metrics-port serves the API's metrics: give --http-port too", [])
    try:
        code = run_cluster(definition, source_dir, options, console)
    except (ClusterError, DevServerError) as exc:
        raise _fail(str(exc), []) from None
    raise typer.Exit(code)


def _check_resources() -> None:
    """Named connections and channels fail here, as a message, rather than in the worker."""
    from schemas.connections import ResourceError, load_resources

    try:
        load_resources()
    except ResourceError as exc:  # its message names fields, never their (secret) values
        raise _fail(str(exc), []) from None


from pipeline_service.cli_client import register as _register_client_commands  # noqa: E402
from pipeline_service.cli_events import register as _register_event_commands  # noqa: E402
from pipeline_service.cli_platform import register as _register_platform_commands  # noqa: E402
from pipeline_service.cli_service import register as _register_service_commands  # noqa: E402

_register_service_commands(app)
_register_client_commands(app)
_register_event_commands(app)
_register_platform_commands(app)


def _settings_problem(error: Any) -> str:
    path = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg"))
    if error.get("type") == "value_error":
        message = str(error.get("ctx", {}).get("error", message))
    return f"{path}: {message}"


def main() -> None:
    """Expected problems exit 2 with a message; the unexpected get one line too."""
    # Libraries log warnings (sqlglot on syntax it does not know); unconfigured, Python would
    # print them on stderr. `laminar run` sends logs to its log file while it runs.
    logging.getLogger().addHandler(logging.NullHandler())
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
