"""Settings: `LAMINAR_*` environment variables (nested with `__`) and an optional YAML file."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import platformdirs
import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_root() -> Path:
    return Path(platformdirs.user_data_dir("laminar")) / "pipelines"


class RunSettings(BaseSettings):
    """Options of `laminar run`. Precedence: command line > environment > --config file."""

    model_config = SettingsConfigDict(
        env_prefix="LAMINAR_", env_nested_delimiter="__", extra="forbid"
    )

    state_dir: Path | None = None
    """Where the run's state lives; default: <user data dir>/laminar/pipelines/<pipeline>."""
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


class ConfigFileError(ValueError):
    """The --config file cannot be read or is not a mapping."""


def load_run_settings(config_file: Path | None, **cli_values: Any) -> RunSettings:
    """Merge command-line values (None = not given) over env vars over the YAML config file."""
    given = {key: value for key, value in cli_values.items() if value is not None}
    settings = RunSettings(**given)
    if config_file is None:
        return settings
    try:
        from_file = yaml.safe_load(config_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"cannot read config file {config_file}: {exc}") from exc
    if not isinstance(from_file, dict):
        raise ConfigFileError(f"config file {config_file} must be a YAML mapping of options")
    # Fields set explicitly (command line or environment) win over the file.
    explicit = {name: getattr(settings, name) for name in settings.model_fields_set}
    return RunSettings(**{**from_file, **explicit})
