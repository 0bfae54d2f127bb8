"""Settings: `LAMINAR_*` environment variables (nested with `__`) and an optional YAML file."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_run_settings(config_file: Path | None, **cli_values: Any) -> RunSettings:
    """Merge command-line values (None = not given) over env vars over the YAML config file."""
    given = {key: value for key, value in cli_values.items() if value is not None}
    settings_cls = type("RunSettingsWithFile", (RunSettings,), {"_config_file": config_file})
    return settings_cls(**given)
