"""What every query engine offers the steps: run bound statements, get counts and a preview.

Large results stay in the engine: a step gets the rows each statement changed and at most
`fetch_rows` rows of what it returned. Cancelling the awaiting task stops the query in the
engine (DuckDB: interrupt; Trino: the protocol's query cancel), not just our wait for it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.dialects import BoundStatement, SqlDialect

__all__ = ["BoundStatement", "QueryEngine", "StatementResult", "jsonable"]

PREVIEW_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class StatementResult:
    """One statement's outcome: rows changed (DML/DDL) or the first rows it returned."""

    rows_affected: int | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    truncated: bool = False
    """More rows were returned than were fetched."""

    def preview(self, max_bytes: int = PREVIEW_MAX_BYTES) -> dict[str, Any]:
        """JSON-ready form for a step result, at most about `max_bytes` of JSON: results go
        into the workflow's history, which must stay small."""
        rows, size, truncated = [], 0, self.truncated
        for row in self.rows:
            values = [jsonable(v) for v in row]
            size += len(json.dumps(values, default=str))
            if size > max_bytes:
                truncated = True
                break
            rows.append(values)
        return {"columns": self.columns, "rows": rows, "truncated": truncated}


class QueryEngine(Protocol):
    """An engine that runs statements in its own dialect with `?` parameters."""

    @property
    def dialect(self) -> SqlDialect: ...

    async def run_statements(
        self, statements: Sequence[BoundStatement], *, fetch_rows: int = 0, atomic: bool = True
    ) -> list[StatementResult]:
        """Run in order; fetch up to `fetch_rows` rows of each result set. `atomic` asks for one
        transaction where the engine has them. Engine errors leave as StepErrors."""
        ...


def jsonable(value: Any) -> Any:
    """A result value as JSON: dates as ISO text, decimals as numbers, bytes as hex."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)
