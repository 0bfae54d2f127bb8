"""Settings: `LAMINAR_*` environment variables (nested with `__`) and an optional YAML file."""

from __future__ import annotations

import contextlib
import difflib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import platformdirs
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.pipeline import Duration, PositiveDuration
from steps.flink_job import FlinkOptions
from steps.flink_local import DEFAULT_TOOL_DIR
from steps.kubernetes_job import KubernetesJobOptions
from steps.spark_submit import KubernetesOptions, SparkOptions

ARTIFACT_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "file"}


def default_state_root() -> Path:
    return Path(platformdirs.user_data_dir("laminar")) / "pipelines"


class Retention(BaseModel):
    """How many checkpoints a remote state keeps (`retention:` in the checkpoint block)."""

    model_config = ConfigDict(extra="forbid")
    max_checkpoints: int = Field(5, ge=1, le=1000)
    max_age: PositiveDuration | None = None


class RunSettings(BaseSettings):
    """Options of `laminar run`. Precedence: command line > environment > --config file; params
    merge per key across them (over the pipeline's defaults)."""

    model_config = SettingsConfigDict(
        env_prefix="LAMINAR_", env_nested_delimiter="__", extra="forbid"
    )

    state_dir: str | None = None
    """Where the run's state lives: a path, or s3:// gs:// az:// file:// (a string: a Path
    would fold the `//`); default: <user data dir>/laminar/pipelines/<pipeline>."""
    name: str | None = None
    sql: str | None = None
    sql_file: Path | None = None
    parallelism: int | None = Field(None, ge=1, le=256)
    params: dict[str, Any] = Field(default_factory=dict)
    force: bool = False
    once: bool = False
    ui: bool = True
    startup_timeout: timedelta = timedelta(seconds=30)
    shutdown_grace: timedelta = timedelta(seconds=5)
    """How long running steps get to finish on Ctrl-C before they are cancelled."""
    http_port: int | None = Field(None, ge=1, le=65535)
    """Serve the service API on this local port (runs are then recorded in the state dir)."""
    metrics_port: int | None = Field(None, ge=1, le=65535)
    kafka: str | None = Field(None, min_length=1)
    """Relay the run's lifecycle events to Kafka: `embedded` (a Tansu broker started here, in
    memory only) or the brokers' `host:port,...`."""
    # State on an object store (see pipeline_service/cluster_remote.py).
    s3_endpoint: str | None = None
    """S3-compatible endpoint (MinIO, R2, ...); credentials come from the AWS chain only."""
    checkpoint_interval: Duration = timedelta(seconds=10)
    retention: Retention = Field(default_factory=lambda: Retention())
    restore_from: str | None = None
    lease_ttl: PositiveDuration = timedelta(seconds=30)
    checkpoint_key: SecretStr | None = None
    """Encrypt snapshots client-side with AES-256-GCM: 32 random bytes in base64
    (LAMINAR_CHECKPOINT_KEY, from a secret store; never on the command line)."""
    local_state_dir: Path | None = None
    """The working copy of a remote state dir; default: under the user cache dir."""
    artifact_url: str | None = None
    """Where the run's logs are uploaded at shutdown (seed name LAMINAR_ARTIFACT_URL)."""
    # Logs.
    log_format: Literal["text", "json"] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_file: Path | None = None

    @field_validator("state_dir", "name", "sql_file", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # An empty path would mean the current directory; an empty name, no name at all.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("checkpoint_key")
    @classmethod
    def _key_format(cls, value: SecretStr | None) -> SecretStr | None:
        from pipeline_service.storage.encryption import parse_key

        if value is not None:
            parse_key(value.get_secret_value())  # SnapshotKeyError never shows the value
        return value

    @field_validator("checkpoint_interval", mode="before")
    @classmethod
    def _bare_seconds(cls, value: Any) -> Any:
        # `--checkpoint-interval 0` arrives as text; LAMINAR_CHECKPOINT_INTERVAL (ms) does not
        # get here as text: load_run_settings converts it first.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return timedelta(seconds=float(value))
        return value


class WorkflowSettings(BaseSettings):
    """How a worker (`laminar worker`, `laminar run`'s embedded one) runs workflow code."""

    model_config = SettingsConfigDict(env_prefix="LAMINAR_", extra="ignore")

    workflow_sandbox: bool = False
    """Run workflows in the Temporal SDK's sandbox. Off by default: Laminar's workflows are
    Laminar's own code (a pipeline's steps never run inside them), the test suite runs them in
    the sandbox and replays saved histories, and the sandbox costs a third of a worker's CPU
    per step (bench/overhead.py)."""


class SparkSettings(BaseSettings):
    """Where Spark steps run: `LAMINAR_SPARK__MASTER=local[4]`, or a `k8s://https://...`
    master with `LAMINAR_SPARK__KUBERNETES__NAMESPACE`, `..__IMAGE`, `..__SERVICE_ACCOUNT`,
    `..__DRIVER_POD_TEMPLATE`, `..__EXECUTOR_POD_TEMPLATE`, `..__UPLOAD_PATH`."""

    model_config = SettingsConfigDict(
        env_prefix="LAMINAR_SPARK__", env_nested_delimiter="__", extra="forbid"
    )

    master: str = "local[2]"
    spark_home: Path | None = None
    kubernetes: KubernetesOptions | None = None
    conf: dict[str, str] = Field(default_factory=dict)

    def options(self) -> SparkOptions:
        return SparkOptions(**self.model_dump())


class FlinkSettings(BaseSettings):
    """Where Flink steps run: `LAMINAR_FLINK__REST_URL=http://jobmanager:8081` (a session
    cluster); `LAMINAR_FLINK__TOOL_DIR` is the Flink distribution `make flink` installs."""

    model_config = SettingsConfigDict(
        env_prefix="LAMINAR_FLINK__", env_nested_delimiter="__", extra="forbid"
    )

    rest_url: str | None = None
    tool_dir: Path = DEFAULT_TOOL_DIR
    s3_endpoint: str | None = None
    """S3-compatible endpoint through which Laminar lists an `s3://` `savepoint_path` (for the
    newest savepoint or checkpoint a new run starts from); credentials: the AWS chain."""

    def options(self, **overrides: Any) -> FlinkOptions:
        return FlinkOptions(**{**self.model_dump(), **overrides})


class KubernetesJobSettings(BaseSettings):
    """Where `runner: kubernetes` python steps run: `LAMINAR_KUBERNETES__NAMESPACE`,
    `LAMINAR_KUBERNETES__SERVICE_ACCOUNT` (the cluster comes from in-cluster config or
    kubeconfig)."""

    model_config = SettingsConfigDict(
        env_prefix="LAMINAR_KUBERNETES__", env_nested_delimiter="__", extra="forbid"
    )

    namespace: str = "default"
    service_account: str | None = None

    def options(self) -> KubernetesJobOptions:
        return KubernetesJobOptions(**self.model_dump())


class ConfigFileError(ValueError):
    """The --config file cannot be read or is not a mapping."""


SEED_ENV = {
    # The seed's names for the same settings (pipeline clusters of similar tools use them).
    "LAMINAR_CHECKPOINT_URL": "state_dir",
    "LAMINAR_PIPELINE_NAME": "name",
    "LAMINAR_CHECKPOINT_INTERVAL": "checkpoint_interval",  # in milliseconds
}
RUNTIME_ENV = {
    # Read by other parts of Laminar (the client commands' options), or set by it for steps.
    "LAMINAR_URL",
    "LAMINAR_API_KEY",
    "LAMINAR_PYTHON_ENVIRONMENTS",
    "LAMINAR_DEBUG",
    "LAMINAR_RECORD_HISTORIES",
    "LAMINAR_RESULT",
    "LAMINAR_CONTEXT",
    "LAMINAR_OUTPUT_DIR",
}


def known_env_names() -> set[str]:
    """Every LAMINAR_ name some settings model reads (a new settings model belongs in this
    list, or its variables would be called unknown), with each model's own prefix."""
    from schemas.connections import Resources

    models: list[type[BaseSettings]] = [
        RunSettings,
        ServiceSettings,
        WorkflowSettings,
        SparkSettings,
        FlinkSettings,
        KubernetesJobSettings,
        Resources,
    ]
    fields = {
        f"{model.model_config.get('env_prefix', '')}{name}".upper()
        for model in models
        for name in model.model_fields
    }
    return fields | set(SEED_ENV) | RUNTIME_ENV


def unknown_env_warnings(environ: dict[str, str] | None = None) -> list[str]:
    """A misspelt LAMINAR_ variable would be ignored silently (and a container's state lost
    with it): name each unknown one with the closest known name."""
    environ = dict(os.environ) if environ is None else environ
    known = known_env_names()
    warnings = []
    for name in sorted(environ):
        if not name.startswith("LAMINAR_") or name in known:
            continue
        # LAMINAR_PARAMS__REGION, LAMINAR_SPARK__KUBERNETES__IMAGE: inside a known field.
        if any(name.startswith(f"{k}__") for k in known):
            continue
        # Compare what follows the prefix: every name shares `LAMINAR_`.
        suffixes = {k.removeprefix("LAMINAR_"): k for k in known}
        close = difflib.get_close_matches(
            name.removeprefix("LAMINAR_"), sorted(suffixes), n=1, cutoff=0.6
        )
        hint = f"; did you mean {suffixes[close[0]]}?" if close else ""
        warnings.append(f"unknown environment variable {name} is ignored{hint}")
    return warnings


def _seed_values(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for env_name, field in SEED_ENV.items():
        value = environ.get(env_name)
        own_name = f"LAMINAR_{field.upper()}"
        if value is None or (own_name != env_name and environ.get(own_name) is not None):
            continue  # the Laminar name wins over the seed's
        if field == "checkpoint_interval":
            values[field] = _milliseconds(value, env_name)
        else:
            values[field] = value
    return values


def _milliseconds(value: Any, where: str) -> Any:
    """The seed gives checkpoint intervals in milliseconds: a bare number means ms here."""
    text = str(value).strip()
    try:
        return timedelta(milliseconds=float(text))
    except ValueError:
        return value  # with a unit ("10s"): the usual duration parser says if it is wrong


def _checkpoint_block(block: Any, config_file: Path) -> dict[str, Any]:
    """The seed's `checkpoint: {interval, path, retention}` config block as flat options."""
    if not isinstance(block, dict):
        raise ConfigFileError(f"config file {config_file}: checkpoint must be a mapping")
    unknown = set(block) - {"interval", "path", "retention"}
    if unknown:
        raise ConfigFileError(
            f"config file {config_file}: checkpoint.{sorted(unknown)[0]}: unknown key "
            "(known: interval, path, retention)"
        )
    flat: dict[str, Any] = {}
    if "interval" in block:
        flat["checkpoint_interval"] = _milliseconds(block["interval"], "checkpoint.interval")
    if "path" in block:
        flat["state_dir"] = block["path"]
    if "retention" in block:
        flat["retention"] = block["retention"]
    return flat


def load_run_settings(
    config_file: Path | None, environ: dict[str, str] | None = None, **cli_values: Any
) -> RunSettings:
    """Merge command-line values (None = not given) over env vars over the YAML config file."""
    environ = dict(os.environ) if environ is None else environ
    given = {key: value for key, value in cli_values.items() if value is not None}
    given = {**_seed_values(environ), **given}
    settings = RunSettings(**given)
    if config_file is None:
        return settings
    try:
        from_file = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"cannot read config file {config_file}: {exc}") from exc
    if not isinstance(from_file, dict):
        raise ConfigFileError(f"config file {config_file} must be a YAML mapping of options")
    if "checkpoint" in from_file:
        block = _checkpoint_block(from_file.pop("checkpoint"), config_file)
        from_file = {**from_file, **block}
    # Fields set explicitly (command line or environment) win over the file.
    explicit = {name: getattr(settings, name) for name in settings.model_fields_set}
    if isinstance(from_file.get("params"), dict) and "params" in explicit:
        # Per key: LAMINAR_PARAMS overrides the file's value of a param, not the whole set.
        explicit["params"] = {**from_file["params"], **explicit["params"]}
    return RunSettings(**{**from_file, **explicit})


def default_database_url() -> str:
    return f"sqlite:///{Path(platformdirs.user_data_dir('laminar')) / 'laminar.db'}"


class ServiceSettings(BaseSettings):
    """Settings of `laminar server`, `laminar worker` and `laminar db upgrade` (LAMINAR_*)."""

    model_config = SettingsConfigDict(
        env_prefix="LAMINAR_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str = Field(default_factory=default_database_url)
    """SQLAlchemy URL: `postgresql://user@host/db` (psycopg 3) or `sqlite:///path`."""
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = "laminar-pipelines"
    admin_api_key: SecretStr | None = None
    """The platform admin's key: creates tenants and their keys. Unset: no platform admin."""
    secret_key: SecretStr | None = None
    """Encrypts tenant secrets at rest (server) and decrypts them for steps (worker); the same
    value on both. Unset: no secrets (`/v1/secrets` answers 503)."""
    http_host: str = "127.0.0.1"
    http_port: int = Field(8092, ge=1, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    server_workers: int = Field(1, ge=1, le=64)
    """`laminar server` processes on the port (each with its own connection pool)."""
    source_dir: Path = Field(default_factory=Path.cwd)
    """Where the scripts of pipelines stored through the API resolve (until code bundles)."""
    work_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("laminar")) / "work"
    )
    """Worker: step work directories and the DuckDB warehouse."""
    bundle_cache: Path = Field(
        default_factory=lambda: Path(platformdirs.user_cache_dir("laminar")) / "bundles"
    )
    """Where code bundles are materialized (read-only, by digest); any process may clear it."""
    artifact_url: str | None = None
    """Where a run's step logs and DuckDB hand-off tables live so every worker and the API
    reach them: s3://, gs://, az://, file:// or a path (the same on every worker and server).
    Unset: logs stay on each worker's disk and DuckDB tables do not cross workers."""
    s3_endpoint: str | None = None
    """S3-compatible endpoint of an s3:// artifact store and of sensors on s3:// objects
    (credentials: the AWS chain only)."""
    artifact_log_interval: Duration = timedelta(seconds=30)
    """How often a running step's log is uploaded to the artifact store (0: only at its end)."""

    @field_validator("artifact_url")
    @classmethod
    def _artifact_scheme(cls, value: str | None) -> str | None:
        # Anything else would be taken for a local directory named like the URL.
        if value is not None and "://" in value:
            scheme = value.split("://", 1)[0].lower()
            if scheme not in ARTIFACT_SCHEMES:
                raise ValueError(
                    f"unknown scheme {scheme!r}: use s3://, gs://, az://, file:// or a path"
                )
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    kafka_bootstrap_servers: str | None = None
    """Kafka brokers (`host:port,...`) the events relay publishes to; unset: no Kafka, events
    stay readable from the outbox through the API."""
    events_topic: str = Field("laminar.pipeline-events", min_length=1, max_length=249)
    kafka_config: dict[str, str | int | bool] = Field(default_factory=dict)
    """Any librdkafka property (JSON), e.g. SASL/TLS: `{"security.protocol": "SASL_SSL"}`."""
    triggers_refresh: Duration = timedelta(seconds=30)
    """How often a worker's trigger consumers re-read which tenants and topics have Kafka
    triggers (a new trigger starts being consumed within this)."""
    relay_batch_size: int = Field(500, ge=1, le=10_000)
    relay_poll_interval: timedelta = timedelta(milliseconds=100)
    """How often an idle relay looks for new outbox rows."""
    notify_interval: Duration = timedelta(seconds=1)
    """How often a worker's notifier sends pipeline notifications and checks SLA deadlines
    (see docs/notifications.md); 0 turns the notifier off on this worker."""
    reconcile_interval: Duration = timedelta(seconds=30)
    """How often a worker asks Temporal about runs it may have ended on its own (execution
    timeout, terminate); 0 turns reconciliation off."""
    reconcile_after: Duration = timedelta(minutes=1)
    """Only runs queued or running for longer than this are reconciled."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Long-running processes (server, worker, events relay/triggers): records at this level
    and above go to stderr, timestamped."""
    log_format: Literal["text", "json"] | None = None
    """`json`: those records as JSON lines; unset or `text`: plain lines."""

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value
