"""Which engine a step runs on: the process's DuckDB, or a named Trino connection."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from schemas.connections import ResourceError, Resources
from schemas.pipeline import EngineName
from steps.base import StepError
from steps.engines.base import QueryEngine
from steps.engines.duckdb import DuckDBEngine
from steps.engines.trino import TrinoEngine


class EngineCatalog:
    """The engines of this worker, by `engine` and `connection` as steps name them."""

    def __init__(self, duckdb: DuckDBEngine, resources: Resources | None = None) -> None:
        self.duckdb = duckdb
        self.resources = resources or Resources()
        self._trino: dict[str, TrinoEngine] = {}

    def secret_names(self, connection: str | None) -> set[str]:
        """The tenant secrets a connection's fields refer to (`{{ secrets.name }}`)."""
        if connection is None or connection not in self.resources.connections:
            return set()
        return set(self.resources.connections[connection].tenant_secrets.values())

    def get(
        self, engine: EngineName, connection: str | None, secrets: Mapping[str, str] | None = None
    ) -> QueryEngine:
        """`secrets`: the run's tenant secrets the connection refers to, by name."""
        if engine == "duckdb":
            return self.duckdb
        if connection is None:  # the step model refuses this already
            raise StepError("engine 'trino' needs a connection", retryable=False)
        try:
            config = self.resources.connection(connection)
        except ResourceError as exc:
            raise StepError(str(exc), error_type="ConfigurationError", retryable=False) from exc
        key = connection
        if config.tenant_secrets:
            values = dict(secrets or {})
            missing = sorted(set(config.tenant_secrets.values()) - set(values))
            if missing:
                raise StepError(
                    f"connection {connection!r} needs the tenant secret(s) "
                    f"{', '.join(missing)}, which this run's tenant has not set",
                    error_type="SecretNotFound",
                    retryable=False,
                )
            names = sorted(config.tenant_secrets.values())
            config = config.with_secrets(values)
            # One engine per set of credentials: tenants never share a client's session.
            digest = hashlib.sha256("\0".join(values[n] for n in names).encode())
            key = f"{connection}#{digest.hexdigest()}"
        found = self._trino.get(key)
        if found is None:
            found = self._trino[key] = TrinoEngine(connection, config)
        return found
