"""Named connections and notification channels, with their secrets, from settings.

Definitions name a connection (`connection: warehouse`) or a channel (`channel: alerts`); the
host, user and secrets behind the name come from the worker's environment, never from the
workflow's input. Configure them with `LAMINAR_CONNECTIONS__<NAME>__<FIELD>` /
`LAMINAR_CHANNELS__<NAME>__<FIELD>` variables, or a YAML file named by `LAMINAR_RESOURCES_FILE`
whose secret fields may say `{env: VARIABLE}` to read the secret from another variable.

Secrets are `SecretStr`: their repr and str are `**********`, so a settings object that ends up
in a log or an error message does not leak them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class ResourceError(ValueError):
    """A connection or channel that is missing or misconfigured (the message names it)."""


def _secret_reference(value: Any) -> Any:
    """`{env: NAME}` reads the secret from the environment variable NAME."""
    if isinstance(value, dict) and set(value) == {"env"}:
        name = value["env"]
        if not isinstance(name, str) or name not in os.environ:
            raise ValueError(f"environment variable {name!r} (named by a secret) is not set")
        return os.environ[name]
    return value


Secret = Annotated[SecretStr, BeforeValidator(_secret_reference)]

TENANT_SECRET = re.compile(r"^\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_.\-]{0,127})\s*\}\}$")
"""A secret field written `{{ secrets.name }}`: the run's tenant's secret `name`, resolved by
the worker's activity when a step uses the connection (platform shape)."""


def tenant_secret_name(value: SecretStr | None) -> str | None:
    """The tenant secret a secret field refers to (`{{ secrets.name }}`), or None."""
    if value is None:
        return None
    found = TENANT_SECRET.match(value.get_secret_value())
    return found.group(1) if found else None


class _Resource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TrinoConnection(_Resource):
    """Where a Trino coordinator is and who we are to it."""

    type: Literal["trino"] = "trino"
    host: str
    port: int = Field(8080, ge=1, le=65535)
    http_scheme: Literal["http", "https"] = "http"
    user: str
    catalog: str | None = None
    schema_: str | None = Field(None, alias="schema")
    password: Secret | None = None
    """Basic authentication (needs https, unless allow_insecure_auth)."""
    access_token: Secret | None = None
    """JWT authentication (needs https, unless allow_insecure_auth)."""
    allow_insecure_auth: bool = False
    """Send credentials over plain http: only for a coordinator on a trusted local network."""
    verify: bool = True
    request_timeout: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _credentials_need_tls(self) -> TrinoConnection:
        if self.password is not None and self.access_token is not None:
            raise ValueError("give a password or an access_token, not both")
        secret = self.password is not None or self.access_token is not None
        if secret and self.http_scheme == "http" and not self.allow_insecure_auth:
            raise ValueError(
                "credentials would travel in clear over http: set http_scheme: https "
                "(or allow_insecure_auth: true for a coordinator on a trusted network)"
            )
        return self

    @property
    def tenant_secrets(self) -> dict[str, str]:
        """Field -> tenant secret name, for the fields written `{{ secrets.name }}`."""
        fields = {"password": self.password, "access_token": self.access_token}
        return {
            field: name for field, value in fields.items() if (name := tenant_secret_name(value))
        }

    def with_secrets(self, values: dict[str, str]) -> TrinoConnection:
        """This connection with its `{{ secrets.name }}` fields set from `values` (by name)."""
        update = {field: SecretStr(values[name]) for field, name in self.tenant_secrets.items()}
        return self.model_copy(update=update)


Connection = TrinoConnection


class _TenantSecrets:
    """Secret fields written `{{ secrets.name }}` name a secret of the run's tenant, resolved
    where the channel is used (the step's activity, the notifier)."""

    secret_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def tenant_secrets(self) -> dict[str, str]:
        """Field -> tenant secret name, for the fields written `{{ secrets.name }}`."""
        return {
            field: name
            for field in self.secret_fields
            if (name := tenant_secret_name(getattr(self, field)))
        }

    def with_secrets(self, values: Mapping[str, str]) -> Any:
        """This channel with its `{{ secrets.name }}` fields set from `values` (by name); a
        name `values` lacks raises ResourceError."""
        wanted = self.tenant_secrets
        missing = sorted(set(wanted.values()) - set(values))
        if missing:
            raise ResourceError(
                f"tenant secret(s) {', '.join(missing)} named by the channel are not set "
                "(laminar secrets set NAME)"
            )
        update = {field: SecretStr(values[name]) for field, name in wanted.items()}
        return self.model_copy(update=update)  # type: ignore[attr-defined]


class WebhookChannel(_TenantSecrets, _Resource):
    """A generic JSON webhook, signed with HMAC-SHA256 when a secret is set."""

    secret_fields: ClassVar[tuple[str, ...]] = ("secret",)

    type: Literal["webhook"]
    url: str
    secret: Secret | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(10.0, gt=0, le=300)
    max_attempts: int = Field(3, ge=1, le=10)
    backoff: float = Field(0.5, ge=0, le=60)
    """Seconds before the second attempt; doubled for each attempt after."""


class SlackChannel(_TenantSecrets, _Resource):
    """A Slack-compatible incoming webhook (the URL is the secret)."""

    secret_fields: ClassVar[tuple[str, ...]] = ("url",)

    type: Literal["slack"]
    url: Secret
    timeout: float = Field(10.0, gt=0, le=300)
    max_attempts: int = Field(3, ge=1, le=10)
    backoff: float = Field(0.5, ge=0, le=60)


class EmailChannel(_TenantSecrets, _Resource):
    """Email over SMTP, optionally upgraded with STARTTLS."""

    secret_fields: ClassVar[tuple[str, ...]] = ("password",)

    type: Literal["email"]
    host: str
    port: int = Field(587, ge=1, le=65535)
    sender: str
    to: list[str] = Field(min_length=1)
    username: str | None = None
    password: Secret | None = None
    starttls: bool = True
    ca_file: Path | None = None
    """CA bundle to verify the server's certificate with (default: the system's)."""
    timeout: float = Field(30.0, gt=0, le=300)


Channel = Annotated[WebhookChannel | SlackChannel | EmailChannel, Field(discriminator="type")]


class Resources(BaseSettings):
    """Every named connection and channel this worker can use."""

    model_config = SettingsConfigDict(
        env_prefix="LAMINAR_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    connections: dict[str, Connection] = Field(default_factory=dict)
    channels: dict[str, Channel] = Field(default_factory=dict)
    resources_file: Path | None = None

    def connection(self, name: str) -> Connection:
        found = self.connections.get(name)
        if found is None:
            known = ", ".join(sorted(self.connections)) or "none configured"
            raise ResourceError(
                f"unknown connection {name!r} (known: {known}); configure it with "
                f"LAMINAR_CONNECTIONS__{name.upper()}__HOST etc. or LAMINAR_RESOURCES_FILE"
            )
        return found

    def channel(self, name: str) -> Any:
        found = self.channels.get(name)
        if found is None:
            known = ", ".join(sorted(self.channels)) or "none configured"
            raise ResourceError(
                f"unknown notification channel {name!r} (known: {known}); configure it with "
                f"LAMINAR_CHANNELS__{name.upper()}__TYPE etc. or LAMINAR_RESOURCES_FILE"
            )
        return found


def load_resources() -> Resources:
    """Connections and channels from the environment, merged over LAMINAR_RESOURCES_FILE.

    Invalid settings raise a ResourceError naming the fields; never pydantic's own error, whose
    text repeats the input, secrets included."""
    try:
        return _load_resources()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ResourceError(f"bad connection or channel settings: {problems}") from None


def _load_resources() -> Resources:
    from_env = Resources()
    if from_env.resources_file is None:
        return from_env
    path = from_env.resources_file
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ResourceError(f"cannot read resources file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ResourceError(f"resources file {path} must be a mapping")
    return Resources(
        connections={**data.get("connections", {}), **from_env.connections},
        channels={**data.get("channels", {}), **from_env.channels},
        resources_file=path,
    )
