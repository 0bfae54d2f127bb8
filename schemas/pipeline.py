"""Pipeline definitions: the language every other part of Laminar speaks.

A pipeline is a DAG of steps. Each step type is one member of the `Step` discriminated union
(by `type`). Structural rules live here (pydantic); rules that need the whole pipeline (unique
ids, known dependencies, cycles, template variables, SQL parsing, script paths) live in
`schemas.checks`; `schemas.loading` runs both and reports every problem at once with its path.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.dialects import SqlDialect
from schemas.quality import Check
from schemas.schedule import Overlap, check_cron, check_zone, expand_cron, zone_instant

EngineName = Literal["duckdb", "trino"]
MAX_PREVIEW_ROWS = 1000


def check_engine_connection(engine: EngineName, connection: str | None) -> None:
    """Trino needs a named connection; the embedded DuckDB takes none."""
    if engine == "trino" and not connection:
        raise ValueError("engine 'trino' needs a connection: name one configured in settings")
    if engine == "duckdb" and connection:
        raise ValueError("engine 'duckdb' is the embedded warehouse and takes no connection")


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


SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$"  # noqa: S105 (a pattern)


class SecretRef(StrictModel):
    """`{secret: name}`: a value from the tenant's secret store, resolved inside the activity
    at run time; the definition (and so the workflow's input and history) holds the name only."""

    secret: str = Field(pattern=SECRET_NAME_PATTERN)


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
    LIST = "list"
    """A JSON list (`[eu, us]` in YAML; `eu,us` or `["eu","us"]` on the command line)."""


class ParamSpec(StrictModel):
    """A typed pipeline parameter; one with `required: true` and no default is given per run."""

    type: ParamType = ParamType.STRING
    default: str | int | float | bool | date | list[Any] | None = None
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
    if isinstance(value, list):
        return {"type": "list", "default": value}
    if value is None:
        return {"required": True}
    return {"type": "string", "default": value}


Param = Annotated[ParamSpec, BeforeValidator(_param_shorthand)]


LOCAL_STEP_MAX_TIMEOUT = timedelta(seconds=10)
"""The longest a local step may run. A local step runs inside the workflow's task on the
worker: the workflow waits for it (other steps' completions queue behind it), it cannot
heartbeat, and a worker that dies mid-step is only noticed when the workflow task times out
(10 s). Local is for short work; anything longer is a regular step."""


class TriggerRule(StrEnum):
    """When a step runs, from how its direct upstream steps ended (an ignored failure counts
    as a success). A step whose rule cannot hold any more is SKIPPED with the reason."""

    ALL_SUCCESS = "all_success"
    ALL_DONE = "all_done"
    """Whatever happened upstream (cleanup): once every upstream step has finished."""
    ALL_FAILED = "all_failed"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    """As soon as one upstream step failed (e.g. a notification on failure)."""
    NONE_FAILED = "none_failed"
    """No upstream step failed: each succeeded or was skipped."""


FAILURE_TOLERANT_RULES = frozenset(
    {TriggerRule.ALL_DONE, TriggerRule.ALL_FAILED, TriggerRule.ONE_FAILED}
)
"""Rules that can hold after a failure: such steps still run when a run fails fast."""


class StepOnFailure(StrEnum):
    FAIL = "fail"
    IGNORE = "ignore"
    """The step's failure does not fail the run; dependants see it as a success."""


MAX_FOR_EACH_PARALLEL = 100
MAX_FOR_EACH_ITEMS = 2_000
"""The most items one `for_each` step fans out to. Histories are not the bound (instances run
in child workflows of FOR_EACH_BATCH items each): the run's summary lists every instance's
state and the step's result every instance's result, and such a payload must stay well below
Temporal's 2 MB limit (about 0.5-0.6 KB per instance)."""


class StepBase(StrictModel):
    LOCAL_BY_DEFAULT: ClassVar[bool] = False

    id: StepId
    description: str = ""
    depends_on: list[str] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout: PositiveDuration = timedelta(hours=1)
    heartbeat_timeout: PositiveDuration | None = None
    local: bool | None = None
    """Run as a Temporal local activity (in the worker running the workflow, no server round
    trip per attempt). Default: true for `noop`, false otherwise. See LOCAL_STEP_MAX_TIMEOUT."""
    compensate: Step | None = None
    """Run if a later step fails and the pipeline has `on_failure: compensate` (saga)."""
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    when: str | None = Field(None, min_length=1, max_length=10_000)
    """A template over params and upstream results (`{{ steps.a.result.rows > 0 }}`): when it
    renders false (`false`, `0`, `no`, `off`, `none` or empty), the step is SKIPPED."""
    on_failure: StepOnFailure = StepOnFailure.FAIL
    pool: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$")
    """A named slot pool (set by the platform admin, per tenant or global): each attempt of
    the step holds one of its slots, so at most `slots` such steps run at once, across runs
    and tenants."""
    for_each: str | None = Field(None, min_length=1, max_length=10_000)
    """Dynamic fan-out: one expression (`{{ params.regions }}`, `{{ steps.ls.result.files }}`)
    that yields a list; one instance of the step runs per item (`<id>[<index>]`), with `item`
    and `item_index` in its templates. Its result is `{"results": [...], "count": n}`, the
    instances' results in item order."""
    max_parallel: int = Field(4, ge=1, le=MAX_FOR_EACH_PARALLEL)
    """At most this many instances of a `for_each` step run at once."""

    @model_validator(mode="before")
    @classmethod
    def _local_steps_default_to_short_timeout(cls, data: Any) -> Any:
        """A local step that sets no timeout gets LOCAL_STEP_MAX_TIMEOUT (not the regular 1 h,
        which a local step may not have), written into the definition so it round-trips."""
        if isinstance(data, dict) and "timeout" not in data:
            local = data.get("local")
            if local is True or (local is None and cls.LOCAL_BY_DEFAULT):
                data = {**data, "timeout": LOCAL_STEP_MAX_TIMEOUT}
        return data

    @property
    def runs_local(self) -> bool:
        return self.LOCAL_BY_DEFAULT if self.local is None else self.local

    @property
    def local_timeout(self) -> timedelta:
        """The timeout of a local attempt (validation keeps it within the bound already)."""
        return min(self.timeout, LOCAL_STEP_MAX_TIMEOUT)


class SqlStep(StepBase):
    """SQL statements on a query engine. `{{ ... }}` expressions become bind parameters."""

    type: Literal["sql"]
    sql: str = Field(min_length=1)
    engine: EngineName = "duckdb"
    connection: str | None = None
    """A named connection from the worker's settings (required for trino)."""
    dialect: SqlDialect | None = None
    """The dialect the SQL is written in; default: the engine's. `trino` SQL runs on DuckDB
    transpiled by sqlglot, so one pipeline runs locally and in production unchanged."""
    preview_rows: int = Field(0, ge=0, le=MAX_PREVIEW_ROWS)
    """Rows of the last statement's result (or of the table it wrote) kept in the result."""

    @model_validator(mode="after")
    def _connection_matches_engine(self) -> SqlStep:
        check_engine_connection(self.engine, self.connection)
        return self

    @property
    def source_dialect(self) -> SqlDialect:
        return self.dialect or self.engine


_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"
Quantity = Annotated[str, _matching(_QUANTITY, "use a Kubernetes quantity such as 500m, 2, 1Gi")]


class PodResources(StrictModel):
    """Requests (= limits) of a step's pod."""

    cpu: Quantity = "1"
    memory: Quantity = "1Gi"


class PythonStep(StepBase):
    """A Python script run in a subprocess, confined to the pipeline's directory."""

    type: Literal["python"]
    script: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str | SecretRef] = Field(default_factory=dict)
    """Variables for the script: text (a template) or `{secret: name}`."""
    inputs: list[str] = Field(default_factory=list)
    """Tables exported to files in the step's working directory before the script starts."""
    input_format: Literal["parquet", "csv"] = "parquet"
    outputs: dict[str, str] = Field(default_factory=dict)
    """Table name -> file the script writes in its working directory (`.parquet` or `.csv`),
    loaded into the warehouse, all in one transaction, after the script succeeds."""
    requirements: list[str] = Field(default_factory=list, max_length=200)
    """Packages for the script (`pandas>=2`): it then runs in its own cached virtualenv."""
    runner: Literal["local", "kubernetes"] = "local"
    """`kubernetes`: the script runs as a Kubernetes Job in `image` (platform shape)."""
    image: str | None = Field(None, min_length=1, max_length=512)
    resources: PodResources = Field(default_factory=PodResources)

    @property
    def secret_names(self) -> set[str]:
        return {value.secret for value in self.env.values() if isinstance(value, SecretRef)}

    @model_validator(mode="after")
    def _runner_fields(self) -> PythonStep:
        if self.runner == "kubernetes":
            if self.image is None:
                raise ValueError("runner 'kubernetes' needs an 'image' to run the script in")
            if self.inputs or self.outputs or self.requirements:
                raise ValueError(
                    "'inputs', 'outputs' and 'requirements' need the local runner: a Kubernetes "
                    "Job gets its packages from its image and its data from where it lives"
                )
        elif self.image is not None:
            raise ValueError("'image' applies only to runner 'kubernetes'")
        return self


_MEMORY = r"^[1-9][0-9]{0,6}[kmgt]?$"
_MAVEN_COORDINATE = r"^[A-Za-z0-9_.\-]+:[A-Za-z0-9_.\-]+:[A-Za-z0-9_.\-]+$"
_CLASS_NAME = r"^[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*$"
SPARK_RESERVED_CONF = ("spark.master", "spark.submit.", "spark.kubernetes.", "spark.laminar.")
"""Conf keys the platform owns: where and as whom a job runs is not a step's choice (a step
that could set spark.kubernetes.namespace could run in another tenant's namespace)."""

SparkMemory = Annotated[
    str, _matching(_MEMORY, "use a JVM memory size such as 512m, 4g (k, m, g or t)")
]


def _spark_conf_key(key: str) -> str:
    if not key.startswith("spark."):
        raise ValueError(f"{key!r} is not a Spark property (they start with 'spark.')")
    if key.startswith(SPARK_RESERVED_CONF):
        raise ValueError(f"{key!r} is set by Laminar's Spark settings, not by a step")
    return key


class SparkStep(StepBase):
    """A Spark application (`.py` or a jar with `main_class`) or Spark SQL, via spark-submit.

    Paths are relative to the pipeline directory and must stay inside it. `args` are templates;
    `{{ ... }}` in `sql` become Spark named parameters, never SQL text.
    """

    type: Literal["spark"]
    application: str | None = Field(None, min_length=1)
    main_class: Annotated[str, _matching(_CLASS_NAME, "use a Java class name")] | None = None
    sql: str | None = Field(None, min_length=1)
    args: list[str] = Field(default_factory=list)
    conf: dict[Annotated[str, AfterValidator(_spark_conf_key)], str] = Field(default_factory=dict)
    packages: list[
        Annotated[str, _matching(_MAVEN_COORDINATE, "use Maven coordinates group:artifact:version")]
    ] = Field(default_factory=list)
    jars: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    driver_memory: SparkMemory | None = None
    executor_memory: SparkMemory | None = None
    executor_cores: int | None = Field(None, ge=1, le=256)
    num_executors: int | None = Field(None, ge=1, le=10000)

    @model_validator(mode="after")
    def _one_kind_of_job(self) -> SparkStep:
        if (self.application is None) == (self.sql is None):
            raise ValueError("give exactly one of 'application' (a .py file or a jar) or 'sql'")
        if self.sql is not None and self.args:
            raise ValueError("'args' go to an application; a 'sql' step takes none")
        if self.application is not None:
            is_jar = self.application.endswith(".jar")
            if not is_jar and not self.application.endswith(".py"):
                raise ValueError(f"application {self.application!r} must be a .py file or a .jar")
            if is_jar and self.main_class is None:
                raise ValueError("a jar application needs 'main_class'")
            if not is_jar and self.main_class is not None:
                raise ValueError("'main_class' applies only to a jar application")
        elif self.main_class is not None:
            raise ValueError("'main_class' applies only to a jar application")
        return self


FLINK_RESERVED_CONF = (
    "execution.target",
    "rest.",
    "jobmanager.",
    "taskmanager.",
    "pipeline.name",
    "kubernetes.",
    "security.",
)
"""Flink options the platform owns: which cluster a job goes to and as whom."""


def _flink_conf_key(key: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9\-]*(\.[a-z0-9][a-z0-9\-]*)+", key):
        raise ValueError(
            f"{key!r} is not a Flink option (e.g. table.exec.resource.default-parallelism)"
        )
    if key.startswith(FLINK_RESERVED_CONF):
        raise ValueError(f"{key!r} is set by Laminar's Flink settings, not by a step")
    return key


STREAMING_TIMEOUT = timedelta(days=365)
"""The timeout of a streaming Flink step that runs until cancelled and sets none."""
STREAMING_STOP_ROOM = timedelta(minutes=5)
"""Room a streaming step with `until:` gets by default past it to stop with a savepoint."""


def _stream_end(value: Any) -> Any:
    """`until: cancelled` (or nothing) runs until the run is cancelled; else a duration."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "cancelled"):
        return None
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f"invalid 'until' {value!r}: use 'cancelled' or a duration such as '30m' or '2h'"
        ) from None


class FlinkStep(StepBase):
    """Flink SQL statements or a jar job on a Flink session cluster.

    `{{ ... }}` in `sql` become SQL literals (quoted and escaped), never SQL text. A batch job
    succeeds when it finishes. A streaming job is watched while it runs: the step runs until
    the run is cancelled (or for `until`), stopping the job with a savepoint, and a failed job
    is restarted from its latest checkpoint by the step's retries.
    """

    type: Literal["flink"]
    sql: str | None = Field(None, min_length=1)
    jar: str | None = Field(None, min_length=1)
    entry_class: Annotated[str, _matching(_CLASS_NAME, "use a Java class name")] | None = None
    args: list[str] = Field(default_factory=list)
    mode: Literal["batch", "streaming"] = "batch"
    parallelism: int | None = Field(None, ge=1, le=10000)
    savepoint_path: str | None = Field(None, min_length=1)
    """Streaming: a directory. A first attempt starts from the newest savepoint in it (or from
    it, if it is a savepoint itself); cancelling stops the job with a savepoint there; the
    job's checkpoints go to `<savepoint_path>/checkpoints` unless `conf` says otherwise."""
    until: Annotated[PositiveDuration | None, BeforeValidator(_stream_end)] = None
    """Streaming: how long the step runs before it stops the job with a savepoint and
    succeeds; `cancelled` (the default): until the run is cancelled or the job finishes."""
    conf: dict[Annotated[str, AfterValidator(_flink_conf_key)], str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _streaming_steps_default_to_long_timeout(cls, data: Any) -> Any:
        """A streaming step is meant to keep running: without a `timeout` it gets `until` plus
        room to stop, or STREAMING_TIMEOUT when it runs until cancelled."""
        if isinstance(data, dict) and data.get("mode") == "streaming" and "timeout" not in data:
            try:
                until = _stream_end(data.get("until"))
            except ValueError:
                return data  # the field's own validation reports it
            timeout = STREAMING_TIMEOUT if until is None else until + STREAMING_STOP_ROOM
            data = {**data, "timeout": timeout}
        return data

    @model_validator(mode="after")
    def _one_kind_of_job(self) -> FlinkStep:
        if (self.jar is None) == (self.sql is None):
            raise ValueError("give exactly one of 'sql' or 'jar'")
        if self.sql is not None and (self.args or self.entry_class):
            raise ValueError("'args' and 'entry_class' go with a 'jar'")
        if self.jar is not None and not self.jar.endswith(".jar"):
            raise ValueError(f"jar {self.jar!r} must be a .jar file")
        if self.savepoint_path and not (
            self.savepoint_path.startswith("/") or "://" in self.savepoint_path
        ):
            raise ValueError(
                f"savepoint_path {self.savepoint_path!r} must be an absolute path or a URI "
                "(s3://bucket/savepoints/step): the Flink cluster resolves it, not the pipeline"
            )
        if self.until is not None and self.mode != "streaming":
            raise ValueError("'until' applies to streaming steps (a batch job ends by itself)")
        if self.until is not None and self.until >= self.timeout:
            raise ValueError(
                f"'until' ({self.until.total_seconds():g}s) must be shorter than 'timeout' "
                f"({self.timeout.total_seconds():g}s): the step needs time to take its savepoint"
            )
        return self


class QualityStep(StepBase):
    """Data-quality checks over a table or a query; failing rows go to quarantine tables."""

    type: Literal["quality"]
    table: str | None = None
    query: str | None = None
    """A SELECT to check instead of a table; `{{ ... }}` values are bound, as in sql steps."""
    engine: EngineName = "duckdb"
    connection: str | None = None
    dialect: SqlDialect | None = None
    """The dialect of `query`, `expression` and `custom_sql` SQL; default: the engine's."""
    checks: list[Check] = Field(min_length=1, max_length=200)
    quarantine_schema: str = Field("quarantine", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    """Failing rows of check C go to table `<quarantine_schema>.<step id>__<C>`."""
    sample_rows: int = Field(5, ge=0, le=100)
    """Failing rows per check kept in the step result."""

    @model_validator(mode="after")
    def _one_source_unique_names(self) -> QualityStep:
        check_engine_connection(self.engine, self.connection)
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table or query")
        seen: set[str] = set()
        for check in self.checks:
            if check.check_name in seen:
                raise ValueError(
                    f"two checks are named {check.check_name!r}: give one a distinct name"
                )
            seen.add(check.check_name)
            if check.type == "schema" and self.table is None:
                raise ValueError("a schema check needs a table (a query has no catalog entry)")
        return self

    @property
    def source_dialect(self) -> SqlDialect:
        return self.dialect or self.engine


class NotificationStep(StepBase):
    """Send a templated message to a channel named in the worker's settings (webhook, Slack,
    email). The channel's URL and secrets stay in settings, never in the definition."""

    type: Literal["notification"]
    channel: str = Field(min_length=1, max_length=128)
    message: str = Field(min_length=1, max_length=100_000)
    """Jinja template over the run (`{{ params.x }}`, `{{ ds }}`, `{{ run_id }}`, ...)."""
    title: str = Field("Laminar: {{ run_id }}", max_length=1000)
    """Subject line of an email, title of a webhook or Slack message (a template too)."""


class NoopStep(StepBase):
    """Does nothing: a join point in the DAG (like Airflow's EmptyOperator)."""

    LOCAL_BY_DEFAULT: ClassVar[bool] = True

    type: Literal["noop"]


OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss")
"""URL schemes a `file:` sensor may name (local files must stay in the pipeline directory)."""


def split_object_url(value: str) -> tuple[str, str] | None:
    """`s3://bucket/key` -> ("s3://bucket", "key"); None for a plain path. ValueError for a
    URL a sensor may not use (another scheme, no bucket, no key, `..`)."""
    if "://" not in value:
        return None
    scheme, rest = value.split("://", 1)
    if scheme.lower() not in OBJECT_STORE_SCHEMES:
        raise ValueError(
            f"scheme '{scheme}://' is not an object store; use one of "
            f"{', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)} or a path relative to the "
            "pipeline directory"
        )
    bucket, _, key = rest.partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(f"'{value}' must name an object: {scheme}://BUCKET/KEY")
    if ".." in key.split("/"):
        raise ValueError(f"'{value}': '..' is not allowed in an object key")
    return f"{scheme.lower()}://{bucket}", key


class UpstreamRun(StrictModel):
    """A run of a pipeline of the same tenant, for a logical date, that must have succeeded."""

    pipeline: PipelineName
    logical_date: str = Field("{{ logical_date }}", min_length=1, max_length=500)
    """The run's logical date: a template (default this run's own), rendered to an ISO 8601
    date-time (`2026-11-23T00:00:00+00:00`; without an offset: UTC) or a date (midnight UTC)."""


class SensorStep(StepBase):
    """Waits for a condition before its dependants run: a file appears in the pipeline directory
    or an object store (`file:`), a SQL query's first value is true (`sql:`), or a pipeline's
    run for a logical date succeeded (`upstream:`). The workflow checks (one short activity),
    then sleeps `poke_interval` on a durable timer (no worker slot is held while waiting),
    until the condition holds or `timeout` has passed: then the step fails with what it waited
    for and how long."""

    type: Literal["sensor"]
    file: str | None = Field(None, min_length=1, max_length=1000)
    """A path relative to the pipeline directory, or an object URL (`s3://bucket/key`); a
    template (`data/{{ ds }}.csv`). In a URL the scheme and bucket are fixed (no template)."""
    sql: str | None = Field(None, min_length=1, max_length=100_000)
    """A query whose first row's first value is true (`SELECT count(*) > 0 FROM t`)."""
    upstream: UpstreamRun | None = None
    """A run of another (or this) pipeline of the tenant that must have succeeded."""
    engine: EngineName = "duckdb"
    connection: str | None = None
    poke_interval: PositiveDuration = timedelta(seconds=60)
    check_timeout: PositiveDuration = timedelta(seconds=60)
    """The time one check may take."""

    @field_validator("file")
    @classmethod
    def _file_inside_pipeline(cls, value: str | None) -> str | None:
        if value is None:
            return value
        url = split_object_url(value)
        if url is not None:
            if "{{" in url[0] or "{%" in url[0]:
                raise ValueError("the scheme and bucket of a sensor's URL cannot be a template")
            return value
        if value.startswith("/") or ".." in value.replace("\\", "/").split("/"):
            raise ValueError("use a path inside the pipeline directory (relative, no '..')")
        return value

    @model_validator(mode="after")
    def _one_condition(self) -> SensorStep:
        given = [c for c in (self.file, self.sql, self.upstream) if c is not None]
        if len(given) != 1:
            raise ValueError("a sensor needs exactly one of 'file', 'sql' or 'upstream'")
        if self.sql is not None:
            check_engine_connection(self.engine, self.connection)
        if self.poke_interval > self.timeout:
            raise ValueError("poke_interval: must not be longer than the sensor's timeout")
        return self


Step = Annotated[
    SqlStep
    | PythonStep
    | SparkStep
    | FlinkStep
    | QualityStep
    | NotificationStep
    | NoopStep
    | SensorStep,
    Field(discriminator="type"),
]
STEP_MODELS: dict[str, type[StepBase]] = {
    "sql": SqlStep,
    "python": PythonStep,
    "spark": SparkStep,
    "flink": FlinkStep,
    "quality": QualityStep,
    "notification": NotificationStep,
    "noop": NoopStep,
    "sensor": SensorStep,
}
STEP_TYPES = tuple(STEP_MODELS)


class Schedule(StrictModel):
    """`cron` in `timezone`; runs for data intervals [fire, next fire) from `start_date`."""

    cron: str = Field(max_length=200)
    """Five fields (minute hour day-of-month month day-of-week) or @hourly/@daily/@weekly/...;
    an optional sixth field is seconds (`* * * * * */5`: every 5 s; for tests and demos)."""
    timezone: str = "UTC"
    """IANA zone the cron is read in (Europe/Berlin); fire times follow its DST changes."""
    start_date: datetime | date | None = None
    """The first interval starts at or after this; a date means midnight in `timezone`."""
    end_date: datetime | date | None = None
    """No interval starts at or after this."""
    catchup: bool = False
    """After downtime: run every missed interval (true) or only the latest one (false)."""
    overlap: Overlap = Overlap.SKIP
    jitter: Duration = timedelta(0)
    """Delay each fire by a stable pseudo-random amount up to this (spreads many pipelines)."""
    paused: bool = False

    @model_validator(mode="before")
    @classmethod
    def _tz_alias(cls, data: Any) -> Any:
        """`tz` is the old name of `timezone` (definitions stored before the schedule block
        had its own model used it); both at once is an error unless they agree."""
        if not isinstance(data, dict) or "tz" not in data:
            return data
        data = dict(data)
        tz = data.pop("tz")
        if "timezone" in data and data["timezone"] != tz:
            raise ValueError(
                f"give only one of timezone ({data['timezone']!r}) and its old name tz ({tz!r})"
            )
        data["timezone"] = tz
        return data

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)

    @field_validator("jitter")
    @classmethod
    def _jitter(cls, value: timedelta) -> timedelta:
        if value < timedelta(0) or value > timedelta(hours=1):
            raise ValueError("jitter must be between 0 and 1h")
        return value

    @model_validator(mode="after")
    def _dates_in_order(self) -> Schedule:
        start, end = self.start, self.end
        if start is not None and end is not None and end <= start:
            raise ValueError(f"end_date ({end.isoformat()}) must be after start_date")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def expression(self) -> str:
        return expand_cron(self.cron)

    @property
    def start(self) -> datetime | None:
        return zone_instant(self.start_date, self.zone)

    @property
    def end(self) -> datetime | None:
        return zone_instant(self.end_date, self.zone)


class Dependency(StrictModel):
    """An upstream pipeline (same tenant) whose runs must have succeeded before this one's run
    for a logical date starts: every upstream run whose logical date lies in this run's data
    interval (one for the same cadence, 24 hourly runs for a daily downstream)."""

    pipeline: PipelineName
    timeout: PositiveDuration = timedelta(hours=6)
    """How long after the downstream's interval ends its run may wait; then it FAILS, naming
    the upstream runs that are missing."""


JsonPath = Annotated[str, Field(min_length=1, max_length=500)]
"""Checked by `schemas.triggers` when a definition is loaded (not in the model: the JSONPath
parser cannot run inside a workflow, where run inputs are decoded)."""


class KafkaTrigger(StrictModel):
    """A message on `topic` starts a run (at least once; never two runs for one message)."""

    topic: str = Field(pattern=r"^[A-Za-z0-9._\-]{1,249}$")
    filter: JsonPath | None = None
    """Only messages where this finds a value start a run: `$.status` (present and not
    false/null/empty), `$[?(@.status == 'paid')]`."""
    params_from: dict[str, JsonPath] = Field(default_factory=dict)
    """Run params from the message (JSON): param name -> JSONPath of its value."""
    key_field: JsonPath | None = None
    """A field that identifies the event: one run per value (default: one per message, by
    topic/partition/offset)."""


class EventTrigger(StrictModel):
    kafka: KafkaTrigger


class OnFailure(StrEnum):
    NONE = "none"
    """The same as `continue` (its name before fail_fast existed)."""
    CONTINUE = "continue"
    """A failed step's dependants are skipped; independent branches finish."""
    FAIL_FAST = "fail_fast"
    """The first failure cancels running steps and skips the rest (except steps whose
    trigger rule runs them after failures: all_done, one_failed, all_failed)."""
    COMPENSATE = "compensate"


class NotifyOn(StrEnum):
    """The lifecycle changes a pipeline-level notification rule sends on."""

    FAILURE = "failure"
    """The run failed (PIPELINE_FAILED)."""
    SUCCESS = "success"
    """The run succeeded (PIPELINE_SUCCEEDED)."""
    RETRYING = "retrying"
    """A step attempt failed and the step will run again (PIPELINE_STEP_RETRYING)."""
    QUALITY_WARNING = "quality_warning"
    """A quality step finished with warn-severity checks failing (PIPELINE_STEP_COMPLETED)."""
    SLA_MISSED = "sla_missed"
    """A logical date's run had not succeeded by the pipeline's `sla` (PIPELINE_SLA_MISSED)."""


class NotificationRule(StrictModel):
    """Send to `channel` (a channel named in the worker's settings, as for a `notification`
    step) on each of the lifecycle changes in `on`."""

    on: list[NotifyOn] = Field(min_length=1, max_length=5)
    channel: str = Field(min_length=1, max_length=128)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """YAML 1.1 reads an unquoted `on:` key as the boolean true: take it as `on`."""
        if isinstance(data, dict) and True in data and "on" not in data:
            return {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("on")
    @classmethod
    def _distinct(cls, value: list[NotifyOn]) -> list[NotifyOn]:
        if len(set(value)) != len(value):
            raise ValueError("a lifecycle change is listed twice")
        return value


_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class Sla(StrictModel):
    """When the run of a logical date must have succeeded. Either `deadline` (a wall-clock time
    in `timezone`: the first such time at or after the end of the logical date's data interval)
    or `after` (a duration after the end of the data interval)."""

    deadline: str | None = None
    """`HH:MM`, 24-hour clock."""
    timezone: str = "UTC"
    """IANA zone `deadline` is read in (Europe/Berlin)."""
    after: PositiveDuration | None = None

    @field_validator("deadline")
    @classmethod
    def _clock(cls, value: str | None) -> str | None:
        if value is not None and not _CLOCK.match(value):
            raise ValueError(f"deadline {value!r} is not a time of day as HH:MM (e.g. 08:00)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)

    @model_validator(mode="after")
    def _one_kind(self) -> Sla:
        if (self.deadline is None) == (self.after is None):
            raise ValueError("give either deadline (with timezone) or after, not both")
        if self.after is not None and self.timezone != "UTC":
            raise ValueError("timezone applies to deadline only")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def due(self, interval_end: datetime) -> datetime:
        """The deadline (UTC) of the logical date whose data interval ends at `interval_end`."""
        end = interval_end.astimezone(UTC)
        if self.after is not None:
            return end + self.after
        assert self.deadline is not None
        hour, minute = (int(part) for part in self.deadline.split(":"))
        local = end.astimezone(self.zone)
        for days in range(3):
            wall = datetime.combine(
                local.date() + timedelta(days=days), time(hour, minute)
            ).replace(tzinfo=self.zone)
            # A wall time in a DST gap does not exist: fold=0 reads it shifted forward.
            instant = wall.astimezone(UTC)
            if instant >= end:
                return instant
        raise AssertionError("unreachable: a time of day recurs within two days")


class PipelineDefinition(StrictModel):
    name: PipelineName
    description: str = ""
    params: dict[str, Param] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1, max_length=1000)
    timeout: PositiveDuration | None = None
    max_parallelism: int = Field(8, ge=1, le=256)
    on_failure: OnFailure = OnFailure.NONE
    schedule: Schedule | None = None
    depends_on: Annotated[
        list[Dependency],
        # Run inputs saved before dependencies existed carry `depends_on: null`.
        BeforeValidator(lambda value: [] if value is None else value),
        Field(max_length=100),
    ] = Field(default_factory=list)
    triggers: list[EventTrigger] = Field(default_factory=list, max_length=20)
    notifications: Annotated[
        list[NotificationRule],
        # Definitions saved before notifications existed carry `notifications: null`.
        BeforeValidator(lambda value: [] if value is None else value),
        Field(max_length=20),
    ] = Field(default_factory=list)
    """Pipeline-level notifications, sent from the lifecycle events (see docs/notifications.md)."""
    sla: Sla | None = None
    """When each scheduled logical date's run must have succeeded (needs a `schedule`)."""

    @field_validator("depends_on")
    @classmethod
    def _no_self_dependency(cls, value: list[Dependency], info: ValidationInfo) -> list[Dependency]:
        names = [d.pipeline for d in value]
        own = info.data.get("name")
        if own in names:
            raise ValueError(f"cycle {own} -> {own} (a pipeline cannot depend on itself)")
        if len(set(names)) != len(names):
            raise ValueError("an upstream pipeline is listed twice")
        return value

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


def notification_problems(pipeline: PipelineDefinition) -> list[tuple[str, str]]:
    """(path, message) for `sla` and `notifications` that do not fit together."""
    found = []
    if pipeline.sla is not None and pipeline.schedule is None:
        found.append(
            ("sla", "an sla needs a schedule: the expected logical dates come from the schedule")
        )
    if pipeline.sla is None:
        for i, rule in enumerate(pipeline.notifications):
            if NotifyOn.SLA_MISSED in rule.on:
                found.append(
                    (f"notifications[{i}].on", "sla_missed needs an `sla` on the pipeline")
                )
    return found


for _model in (
    StepBase,
    PodResources,
    SqlStep,
    PythonStep,
    SparkStep,
    FlinkStep,
    QualityStep,
    NotificationStep,
    NoopStep,
    NotificationRule,
    Sla,
    Schedule,
    Dependency,
    KafkaTrigger,
    EventTrigger,
    PipelineDefinition,
):
    _model.model_rebuild()
