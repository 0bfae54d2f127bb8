"""Pipeline definitions: the language every other part of Laminar speaks.

A pipeline is a DAG of steps. Each step type is one member of the `Step` discriminated union
(by `type`). Structural rules live here (pydantic); rules that need the whole pipeline (unique
ids, known dependencies, cycles, template variables, SQL parsing, script paths) live in
`schemas.checks`; `schemas.loading` runs both and reports every problem at once with its path.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"
PIPELINE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,62}$"


def _matching(pattern: str, rule: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(f"{value!r} is not allowed: {rule}")
        return value

    return AfterValidator(check)


StepId = Annotated[
    str,
    _matching(
        STEP_ID_PATTERN,
        "use letters, digits, '_' and '-' (at most 64), starting with a letter or '_'",
    ),
]
PipelineName = Annotated[
    str,
    _matching(
        PIPELINE_NAME_PATTERN,
        "use lowercase letters, digits, '_' and '-' (at most 63), starting with a letter or digit",
    ),
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> Any:
    """Accept `30s`, `5m`, `1h30m`, `250ms`, a number of seconds, or ISO 8601 (`PT5M`)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text.startswith("p"):
            return value  # ISO 8601: pydantic parses it
        if text and _DURATION_PART.sub("", text) == "":
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
            return timedelta(seconds=seconds)
    raise ValueError(
        f"invalid duration {value!r}: use a number of seconds or e.g. '30s', '5m', '1h30m', 'PT5M'"
    )


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("duration must be greater than zero")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda td: td.total_seconds(), return_type=float, when_used="json"),
]
"""A length of time; serialized as seconds so it round-trips through JSON payloads."""
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]


class StrictModel(BaseModel):
    """Definitions reject unknown fields so typos surface as errors, not silent defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(StrictModel):
    """How a failed step is retried; maps one to one onto Temporal's activity RetryPolicy."""

    max_attempts: int = Field(3, ge=1, le=100)
    initial_interval: PositiveDuration = timedelta(seconds=1)
    backoff_coefficient: float = Field(2.0, ge=1.0, le=100.0)
    maximum_interval: PositiveDuration | None = None
    """Cap on the wait between attempts; default: 100 x initial_interval (as Temporal's)."""
    non_retryable_errors: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cap_not_below_start(self) -> RetryPolicy:
        if self.maximum_interval is not None and self.maximum_interval < self.initial_interval:
            raise ValueError(
                f"maximum_interval ({self.maximum_interval.total_seconds():g}s) must not be "
                f"less than initial_interval ({self.initial_interval.total_seconds():g}s)"
            )
        return self


class ParamType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"


class ParamSpec(StrictModel):
    """A typed pipeline parameter; one with `required: true` and no default is given per run."""

    type: ParamType = ParamType.STRING
    default: str | int | float | bool | date | None = None
    required: bool = False
    description: str = ""


def _param_shorthand(value: Any) -> Any:
    """`region: EU` is shorthand for `region: {type: string, default: EU}`."""
    if isinstance(value, dict):
        return value
    if isinstance(value, bool):
        return {"type": "boolean", "default": value}
    if isinstance(value, int):
        return {"type": "integer", "default": value}
    if isinstance(value, float):
        return {"type": "number", "default": value}
    if isinstance(value, date):
        return {"type": "date", "default": value}
    if value is None:
        return {"required": True}
    return {"type": "string", "default": value}


Param = Annotated[ParamSpec, BeforeValidator(_param_shorthand)]


class StepBase(StrictModel):
    id: StepId
    description: str = ""
    depends_on: list[str] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: PositiveDuration = timedelta(hours=1)
    heartbeat_timeout: PositiveDuration | None = None
    compensate: Step | None = None
    """Run if a later step fails and the pipeline has `on_failure: compensate` (saga)."""


class SqlStep(StepBase):
    """SQL statements on a query engine. `{{ ... }}` expressions become bind parameters."""

    type: Literal["sql"]
    sql: str = Field(min_length=1)
    engine: Literal["duckdb"] = "duckdb"


class PythonStep(StepBase):
    """A Python script run in a subprocess, confined to the pipeline's directory."""

    type: Literal["python"]
    script: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    inputs: list[str] = Field(default_factory=list)
    """Tables exported to files in the step's working directory before the script starts."""
    input_format: Literal["parquet", "csv"] = "parquet"


class NoopStep(StepBase):
    """Does nothing: a join point in the DAG (like Airflow's EmptyOperator)."""

    type: Literal["noop"]


Step = Annotated[SqlStep | PythonStep | NoopStep, Field(discriminator="type")]
STEP_TYPES = ("sql", "python", "noop")


class OnFailure(StrEnum):
    NONE = "none"
    COMPENSATE = "compensate"


class PipelineDefinition(StrictModel):
    name: PipelineName
    description: str = ""
    params: dict[str, Param] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1, max_length=1000)
    timeout: PositiveDuration | None = None
    max_parallelism: int = Field(8, ge=1, le=256)
    on_failure: OnFailure = OnFailure.NONE
    # Reserved for later capabilities; accepted so definitions can already carry them.
    schedule: dict[str, Any] | None = None
    depends_on: list[dict[str, Any]] | None = None
    notifications: list[dict[str, Any]] | None = None

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


for _model in (StepBase, SqlStep, PythonStep, NoopStep, PipelineDefinition):
    _model.model_rebuild()
