"""What a Flink step submits: settings, the SQL job file, the `flink run` command line.

Pure functions of the step, the options and the paths (tested without a cluster).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict

from schemas.pipeline import FlinkStep
from schemas.run import RunContext, UpstreamResult
from schemas.templating import (
    RENDER_ERRORS,
    IsoDateTime,
    TemplateProblem,
    identifier_name,
    template_variables,
)
from steps.base import StepContext, StepError
from steps.flink_local import DEFAULT_TOOL_DIR, FlinkNotInstalled, flink_config, flink_home
from steps.sql_split import split_statements

SQL_DRIVER = Path(__file__).with_name("flink_sql_driver.py")
SQL_JOB_NAME = "flink_sql_job.json"


class FlinkOptions(BaseModel):
    """Where Flink steps run: a session cluster's REST address, and the Flink distribution."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rest_url: str | None = None
    """`http://host:8081`; `laminar run` starts a local cluster and sets it when a pipeline
    has Flink steps."""
    tool_dir: Path = DEFAULT_TOOL_DIR
    python: str = sys.executable
    poll_interval: float = 1.0
    terminate_grace: float = 5.0
    savepoint_timeout: float = 60.0
    """How long stopping a streaming job waits for its savepoint before cancelling it (less when
    the attempt has less time left)."""
    s3_endpoint: str | None = None
    """An S3-compatible endpoint for listing an `s3://` `savepoint_path` (MinIO, R2, ...)."""


def job_name(tag: str) -> str:
    return f"laminar-{tag}"


def sql_literal(value: Any) -> str:
    """A template value as a Flink SQL literal: quoted, escaped, typed; never SQL text."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StepError(
                f"{value} has no SQL literal", error_type="TemplateError", retryable=False
            )
        return repr(value)
    if isinstance(value, datetime):
        moment = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        return f"TIMESTAMP '{moment.isoformat(sep=' ')}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    return "'" + str(value).replace("'", "''") + "'"


class FlinkIdentifier(str):
    """A name the `ident` filter validated and quoted: spliced as SQL text, not a literal."""


def flink_ident(value: Any) -> FlinkIdentifier:
    """`{{ params.table | ident }}` in Flink SQL: a backtick-quoted identifier."""
    return FlinkIdentifier("`" + identifier_name(value).replace("`", "``") + "`")


class _LiteralCollector:
    """Jinja `finalize` hook: each `{{ ... }}` value becomes a placeholder, kept aside."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        if isinstance(value, Undefined):
            str(value)  # raises the undefined-name (or sandbox) error with its real message
        if isinstance(value, IsoDateTime):
            value = datetime.fromisoformat(value.isoformat())
        self.values.append(value)
        return f"{self.prefix}{len(self.values) - 1}\x00"


def render_flink_sql(
    sql: str, run: RunContext, upstream: Mapping[str, UpstreamResult] | None = None
) -> list[str]:
    """The step's statements with every `{{ ... }}` replaced by its value: a typed, escaped
    literal where a value goes, its escaped text inside a quoted string (Flink SQL has no bind
    parameters, and connector options take only plain string literals)."""
    collector = _LiteralCollector("\x00lam")
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, finalize=collector
    )
    env.filters["ident"] = flink_ident
    try:
        text = env.from_string(sql).render(template_variables(run, upstream))
    except TemplateProblem:
        raise
    except RENDER_ERRORS as exc:
        raise TemplateProblem(f"template error: {exc}") from exc
    return split_statements(_place_literals(text, collector), "spark")


_PLACEHOLDER = re.compile(r"\x00lam(\d+)\x00")


def _place_literals(text: str, collector: _LiteralCollector) -> str:
    """Replace placeholders, knowing for each whether it stands inside a '...' string."""
    out: list[str] = []
    in_string = False
    i = 0
    while i < len(text):
        match = _PLACEHOLDER.match(text, i)
        if match:
            value = collector.values[int(match[1])]
            if in_string:
                out.append(_text_of(value).replace("'", "''"))
            elif isinstance(value, FlinkIdentifier):
                out.append(value)
            else:
                out.append(sql_literal(value))
            i = match.end()
            continue
        char = text[i]
        if not in_string and text.startswith(("--", "/*", "`"), i):
            # Comments and `quoted names` are copied as they are: a quote in them is no string.
            closing = {"-": "\n", "/": "*/", "`": "`"}[char]
            end = text.find(closing, i + (1 if char == "`" else 2))
            end = len(text) if end < 0 else end + len(closing)
            render = _comment_text if char != "`" else _name_text
            out.append(_fill(text[i:end], collector.values, render))
            i = end
            continue
        if char == "'":
            in_string = not in_string  # a doubled '' toggles twice: still inside
        out.append(char)
        i += 1
    return "".join(out)


def _fill(text: str, values: list[Any], render: Callable[[Any], str]) -> str:
    return _PLACEHOLDER.sub(lambda m: render(values[int(m[1])]), text)


def _comment_text(value: Any) -> str:
    """A value in a comment: on one line, unable to close the comment."""
    return re.sub(r"[\r\n]+", " ", _text_of(value)).replace("*/", "* /")


def _name_text(value: Any) -> str:
    """A value inside a `quoted name`: backticks doubled, as Flink SQL escapes them."""
    if isinstance(value, FlinkIdentifier):
        value = value[1:-1].replace("``", "`")  # `ident` inside backticks: the name itself
    return _text_of(value).replace("`", "``")


def _text_of(value: Any) -> str:
    if isinstance(value, datetime):
        moment = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        return moment.isoformat(sep=" ")
    return "" if value is None else str(value)


def rest_target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StepError(
            f"Flink REST address {url!r} must look like http://host:8081",
            error_type="FlinkSettingsError",
            retryable=False,
        )
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


CHECKPOINT_INTERVAL = "1 min"
"""Streaming jobs checkpoint this often unless `conf` sets `execution.checkpointing.interval`."""


def flink_uri(path: str) -> str:
    """A location as Flink's file systems want it: an absolute local path gets `file://`."""
    return f"file://{path}" if path.startswith("/") else path


def streaming_config(step: FlinkStep) -> dict[str, str]:
    """What a streaming job needs to be restarted from a checkpoint: periodic checkpoints,
    written out (under `<savepoint_path>/checkpoints` by default) and kept when the job ends.
    The step's own `conf` wins over each of these."""
    config = {
        "execution.checkpointing.interval": CHECKPOINT_INTERVAL,
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
    }
    if step.savepoint_path:
        checkpoints = step.savepoint_path.rstrip("/") + "/checkpoints"
        config["execution.checkpointing.dir"] = flink_uri(checkpoints)
    return {key: value for key, value in config.items() if key not in step.conf}


def job_config(
    step: FlinkStep, options: FlinkOptions, tag: str, restore_path: str | None = None
) -> dict[str, str]:
    """Flink options for the jobs of one attempt: the step's own, then the platform's.
    `restore_path`: the checkpoint or savepoint a streaming job starts from."""
    if options.rest_url is None:
        raise StepError(
            "no Flink cluster configured: set LAMINAR_FLINK__REST_URL (a session cluster's REST "
            "address); `laminar run` starts a local one for pipelines with Flink steps",
            error_type="FlinkSettingsError",
            retryable=False,
        )
    host, port = rest_target(options.rest_url)
    config = dict(step.conf)
    if step.mode == "streaming":
        config.update(streaming_config(step))
    config.update(
        {
            "execution.target": "remote",
            "rest.address": host,
            "rest.port": str(port),
            "pipeline.name": job_name(tag),
            "execution.runtime-mode": step.mode.upper(),
        }
    )
    if step.parallelism:
        config["parallelism.default"] = str(step.parallelism)
    if step.mode == "streaming" and restore_path:
        config["execution.state-recovery.path"] = flink_uri(restore_path)
    return config


def write_sql_job(
    step: FlinkStep,
    options: FlinkOptions,
    ctx: StepContext,
    tag: str,
    work_dir: Path,
    restore_path: str | None = None,
) -> Path:
    assert step.sql is not None
    job = {
        "mode": step.mode,
        "job_name": job_name(tag),
        "config": job_config(step, options, tag, restore_path),
        "statements": render_flink_sql(step.sql, ctx.run, ctx.upstream),
    }
    path = work_dir / SQL_JOB_NAME
    path.write_text(json.dumps(job, indent=2) + "\n")
    return path


def client_conf_dir(options: FlinkOptions, config: dict[str, str], work_dir: Path) -> Path:
    """A conf dir for the `flink` CLI: the distribution's defaults plus the target cluster."""
    home = _home(options)
    conf_dir = work_dir / "flink-conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(home / "conf" / "log4j-cli.properties", conf_dir / "log4j-cli.properties")
    (conf_dir / "config.yaml").write_text(flink_config(home, dict(config)))
    return conf_dir


def sql_command(options: FlinkOptions, job_path: Path, tag: str) -> list[str]:
    """`flink run -py` with Laminar's driver; the tag marks the processes of this step."""
    home = _home(options)
    return [
        str(home / "bin" / "flink"),
        "run",
        "-py",
        str(SQL_DRIVER),
        "-pyclientexec",
        options.python,
        str(job_path),
        f"laminar-tag={tag}",
    ]


def _home(options: FlinkOptions) -> Path:
    try:
        return flink_home(options.tool_dir)
    except FlinkNotInstalled as exc:
        raise StepError(str(exc), error_type="FlinkNotInstalled", retryable=False) from exc
