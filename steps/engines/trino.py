"""Trino engine: statements over the Trino client protocol (the `trino` package).

The client blocks, so each step's statements run in a worker thread. Cancelling the awaiting
task sends the protocol's cancel (DELETE of the query's next URI, which makes the coordinator
abort the query) until the thread lets go, so a cancelled step does not leave its query
running on the cluster. Trino runs each statement in its own transaction here (autocommit):
`atomic` is not available across statements.

Connection secrets (password, token) live in SecretStr fields and reach only the client's
authentication object; errors are re-worded from the client's, which never carry them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any, Literal

import trino
from trino.auth import Authentication, BasicAuthentication, JWTAuthentication
from trino.exceptions import (
    HttpError,
    TrinoAuthError,
    TrinoConnectionError,
    TrinoExternalError,
    TrinoQueryError,
    TrinoUserError,
)

from schemas.connections import TrinoConnection
from steps.base import StepError
from steps.engines.base import BoundStatement, StatementResult

log = logging.getLogger(__name__)

_CANCEL_POLL_SECONDS = 0.05
_CANCEL_GIVE_UP_SECONDS = 30.0


class _Stopped(Exception):
    """The statements were stopped between two of them because the step was cancelled."""


class TrinoEngine:
    """One named Trino connection; a fresh client connection per step execution."""

    dialect: Literal["trino"] = "trino"

    def __init__(self, name: str, connection: TrinoConnection) -> None:
        self.name = name
        self.connection = connection

    def __repr__(self) -> str:  # never the settings object: it is safe, but say less
        return f"TrinoEngine({self.name!r})"

    def _auth(self) -> Authentication | None:
        conn = self.connection
        if conn.password is not None:
            return BasicAuthentication(conn.user, conn.password.get_secret_value())
        if conn.access_token is not None:
            return JWTAuthentication(conn.access_token.get_secret_value())
        return None

    def connect(self) -> trino.dbapi.Connection:
        conn = self.connection
        return trino.dbapi.connect(  # type: ignore[no-any-return,no-untyped-call]
            host=conn.host,
            port=conn.port,
            user=conn.user,
            catalog=conn.catalog,
            schema=conn.schema_,
            http_scheme=conn.http_scheme,
            auth=self._auth(),
            verify=conn.verify,
            request_timeout=conn.request_timeout,
            allow_insecure_auth=conn.allow_insecure_auth,
            source="laminar",
            # Retries belong to the step's retry policy, which sees the classified error.
            max_attempts=1,
        )

    def _run(
        self,
        statements: Sequence[BoundStatement],
        fetch_rows: int,
        stop: threading.Event,
        current: list[Any],
    ) -> list[StatementResult]:
        connection = self.connect()
        try:
            results = []
            for statement in statements:
                if stop.is_set():
                    raise _Stopped
                cursor = connection.cursor()
                current[:] = [cursor]
                cursor.execute(statement.sql, statement.params or None)
                results.append(_statement_result(cursor, fetch_rows))
            return results
        finally:
            current.clear()
            connection.close()  # type: ignore[no-untyped-call]

    async def run_statements(
        self, statements: Sequence[BoundStatement], *, fetch_rows: int = 0, atomic: bool = True
    ) -> list[StatementResult]:
        """Run in order on the coordinator; cancellation cancels the running query."""
        stop = threading.Event()
        current: list[Any] = []
        task = asyncio.ensure_future(
            asyncio.to_thread(self._run, statements, fetch_rows, stop, current)
        )
        try:
            await asyncio.wait({task})
            return task.result()
        except asyncio.CancelledError:
            stop.set()
            await _cancel_until_done(current, task)
            raise
        except _Stopped as exc:  # pragma: no cover - only after a cancellation
            raise StepError("cancelled", error_type="Cancelled") from exc
        except Exception as exc:
            raise classify_error(self.name, exc) from exc


def _statement_result(cursor: Any, fetch_rows: int) -> StatementResult:
    if cursor.update_type is not None:
        cursor.fetchall()  # DML/DDL: one row holding the count, or none
        count = cursor.rowcount
        return StatementResult(rows_affected=count if count is not None and count >= 0 else None)
    columns = [d[0] for d in cursor.description or []]
    rows = cursor.fetchmany(fetch_rows + 1) if fetch_rows else []
    truncated = len(rows) > fetch_rows
    if truncated or not fetch_rows:
        # The rest of the result stays on the cluster: stop producing it.
        with contextlib.suppress(Exception):
            cursor.cancel()
    return StatementResult(
        columns=columns, rows=[list(r) for r in rows[:fetch_rows]], truncated=truncated
    )


async def _cancel_until_done(current: list[Any], task: asyncio.Future[Any]) -> None:
    """Send the protocol's cancel until the thread returns (a cancel sent before the query
    reached the coordinator finds nothing to cancel), then let the thread go."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CANCEL_GIVE_UP_SECONDS
    cancels = 0
    while not task.done() and loop.time() < deadline:
        if current:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(current[0].cancel)
        try:
            await asyncio.wait({task}, timeout=_CANCEL_POLL_SECONDS)
        except asyncio.CancelledError:
            cancels += 1
            if cancels > 3:
                raise
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the cancelled query's error is expected


def classify_error(name: str, exc: Exception) -> StepError:
    """A client error as a StepError that says whether another attempt can help."""
    where = f"trino connection {name!r}"
    if isinstance(exc, TrinoUserError):
        return StepError(
            f"{where}: {exc.error_name}: {exc.message}", error_type="SqlError", retryable=False
        )
    if isinstance(exc, TrinoAuthError):
        return StepError(f"{where}: authentication failed", error_type="AuthError", retryable=False)
    if isinstance(exc, HttpError) and " 401" in f" {exc}":
        return StepError(f"{where}: authentication failed", error_type="AuthError", retryable=False)
    if isinstance(exc, TrinoExternalError | TrinoQueryError):
        return StepError(f"{where}: {exc.error_name}: {exc.message}", error_type="TrinoError")
    if isinstance(exc, TrinoConnectionError | HttpError | OSError):
        return StepError(f"{where}: {exc}", error_type="ConnectionError")
    if isinstance(exc, StepError):
        return exc
    return StepError(f"{where}: {type(exc).__name__}: {exc}", error_type=type(exc).__name__)
