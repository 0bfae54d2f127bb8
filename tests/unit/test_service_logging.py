"""The service processes' log formatter masks the settings' secrets in every line."""

from __future__ import annotations

import logging
import sys

from pydantic import SecretStr

from pipeline_service.service_logging import ServiceFormatter, secrets_of
from pipeline_service.settings import ServiceSettings


def test_secrets_of_the_settings_are_masked_in_messages_and_tracebacks() -> None:
    settings = ServiceSettings(
        database_url="postgresql://laminar:db-pass-1234@db.example/laminar",
        admin_api_key=SecretStr("admin-key-5678"),
        kafka_config={"sasl.password": "kafka-pass-9012", "acks": "all"},
    )
    assert sorted(secrets_of(settings)) == ["admin-key-5678", "db-pass-1234", "kafka-pass-9012"]
    text = ServiceFormatter("text", secrets_of(settings))
    try:
        raise RuntimeError("connect failed with kafka-pass-9012")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "laminar", logging.WARNING, __file__, 1,
        "key %s on %s", ("admin-key-5678", settings.database_url), exc_info,
    )  # fmt: skip
    line = text.format(record)
    assert "connect failed with ***" in line and "key *** on postgresql://laminar:***@" in line
    assert "Traceback (most recent call last)" in line  # plain text, not rich's boxes
    for secret in secrets_of(settings):
        assert secret not in line
    assert "admin-key-5678" not in ServiceFormatter("json", secrets_of(settings)).format(record)
