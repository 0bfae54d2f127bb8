"""Which engine a step runs on: the process's DuckDB, or a named Trino connection."""

from __future__ import annotations

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

    def get(self, engine: EngineName, connection: str | None) -> QueryEngine:
        if engine == "duckdb":
            return self.duckdb
        if connection is None:  # the step model refuses this already
            raise StepError("engine 'trino' needs a connection", retryable=False)
        found = self._trino.get(connection)
        if found is None:
            try:
                config = self.resources.connection(connection)
            except ResourceError as exc:
                raise StepError(str(exc), error_type="ConfigurationError", retryable=False) from exc
            found = self._trino[connection] = TrinoEngine(connection, config)
        return found
