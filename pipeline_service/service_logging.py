"""Logs of the platform's long-running processes (`laminar server`, `laminar worker`,
`laminar events relay`, `laminar events triggers`): one timestamped line per record on stderr
at LAMINAR_LOG_LEVEL (default info, as Airflow's and Dagster's workers log), JSON lines with
LAMINAR_LOG_FORMAT=json. The settings' secrets are masked in every line.

`laminar run` logs to its state dir instead (cluster_logging.py); client commands stay quiet.
"""

from __future__ import annotations

import logging
import logging.config
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from pipeline_service.cluster_logging import LogFormat, configure_structlog, formatter

if TYPE_CHECKING:
    from pipeline_service.settings import ServiceSettings

MASK = "***"
CHATTY = ("alembic", "httpx", "httpcore", "botocore", "urllib3")
"""Libraries that log routine steps (every request, every migration check) at info: shown
from debug on."""


class ServiceFormatter(logging.Formatter):
    """The records rendered as `laminar run` renders them (tracebacks as plain text), each
    occurrence of a secret replaced by `***`."""

    def __init__(self, fmt: LogFormat = "text", secrets: list[str] | None = None) -> None:
        super().__init__()
        configure_structlog()  # also in uvicorn's server processes, which start afresh
        self._inner = formatter(fmt, plain_tracebacks=True)
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets or () if s}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = self._inner.format(record)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


def secrets_of(settings: ServiceSettings) -> list[str]:
    """The values no log line may show: API and encryption keys, the database password and
    any password-like librdkafka property."""
    values = [
        key.get_secret_value()
        for key in (settings.admin_api_key, settings.secret_key)
        if key is not None
    ]
    try:
        password = make_url(settings.database_url).password
    except Exception:  # an unparsable URL fails later, with its own message
        password = None
    if password:
        values.append(str(password))
    values += [
        str(value)
        for name, value in settings.kafka_config.items()
        if any(word in name.lower() for word in ("password", "secret", "token"))
    ]
    return values


def service_log_config(settings: ServiceSettings) -> dict[str, Any]:
    """A `logging.config.dictConfig` of these logs. uvicorn gets it too: with `--workers N`
    its server processes are fresh interpreters that apply it themselves."""
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "laminar": {
                "()": f"{__name__}.ServiceFormatter",
                "fmt": settings.log_format or "text",
                "secrets": secrets_of(settings),
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "laminar",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's own loggers print through the root handler, timestamped like the rest.
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            **{name: {"level": "DEBUG" if level == "DEBUG" else "WARNING"} for name in CHATTY},
        },
    }


def configure_service_logging(settings: ServiceSettings) -> None:
    """Log to stderr as `service_log_config` says, in this process."""
    logging.config.dictConfig(service_log_config(settings))
