"""DuckDB engine: one parent connection per process, one cursor per step execution.

DuckDB calls block, so they run in a worker thread. Asyncio cancellation (step timeout, run
cancel, worker shutdown) interrupts the running query and waits for the thread to let go of
the cursor before the cancellation propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import duckdb

from schemas.dialects import BoundStatement
from steps.base import StepError
from steps.engines.base import StatementResult

__all__ = ["DuckDBEngine", "ExportFormat", "ScriptOutcome", "quote_identifier", "quote_literal"]

T = TypeVar("T")
ExportFormat = Literal["parquet", "csv"]

# Statements whose single "Count" row is a number of rows written.
_COUNTING = frozenset(
    {
        duckdb.StatementType.INSERT,
        duckdb.StatementType.UPDATE,
        duckdb.StatementType.DELETE,
        duckdb.StatementType.CREATE,
        duckdb.StatementType.COPY,
        duckdb.StatementType.MERGE_INTO,
    }
)
# Retrying cannot fix these: the SQL or the data it meets is wrong.
_PERMANENT_ERRORS: tuple[type[duckdb.Error], ...] = (
    duckdb.ProgrammingError,  # parser, binder, catalog, invalid input
    duckdb.DataError,  # conversion, out of range
    duckdb.IntegrityError,  # constraints
    duckdb.NotSupportedError,
)
_INTERRUPT_POLL_SECONDS = 0.05


class ScriptInterrupted(Exception):
    """The script was stopped between statements because its execution was cancelled."""


@dataclass(frozen=True)
class ScriptOutcome:
    statements: int
    rows_affected: int | None
    last: StatementResult | None = None
    """The last statement's result (with up to `fetch_rows` rows when it returned some)."""


def quote_identifier(name: str) -> str:
    """Quote a possibly qualified name (`table`, `schema.table`, `db.schema.table`)."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 3 or any(not part or "\x00" in part for part in parts):
        raise StepError(f"invalid table name {name!r}", error_type="SqlError", retryable=False)
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def quote_literal(value: str) -> str:
    if "\x00" in value:
        raise StepError("NUL in SQL string literal", error_type="SqlError", retryable=False)
    return "'" + value.replace("'", "''") + "'"


def classify_error(exc: duckdb.Error) -> StepError:
    """Map a DuckDB error onto a StepError that says whether a retry can help."""
    if isinstance(exc, _PERMANENT_ERRORS):
        return StepError(str(exc), error_type="SqlError", retryable=False)
    # I/O, transaction conflicts, out of memory, interrupts: another attempt may succeed.
    return StepError(str(exc), error_type="SqlTransientError", retryable=True)


class DuckDBEngine:
    """A DuckDB database shared by the steps running in this process (None = in memory)."""

    dialect: Literal["duckdb"] = "duckdb"

    def __init__(self, database_path: Path | None) -> None:
        self.database_path = database_path
        if database_path is not None:
            database_path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = duckdb.connect(
            str(database_path) if database_path is not None else ":memory:"
        )

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the same database; safe to use from one other thread."""
        return self._connection.cursor()

    def close(self) -> None:
        self._connection.close()

    # -- blocking API (run in a thread) -------------------------------------------------

    def _execute(
        self,
        sql_text: str,
        binds: dict[str, Any],
        cursor: duckdb.DuckDBPyConnection | None,
        search_path: Path | None,
        stop: threading.Event | None,
        fetch_rows: int = 0,
    ) -> ScriptOutcome:
        own = cursor is None
        cur = self.cursor() if cursor is None else cursor
        try:
            if search_path is not None:
                # Session-local: relative paths in read_csv(...) etc. resolve against it.
                cur.execute(f"SET file_search_path = {quote_literal(str(search_path))}")
            statements = cur.extract_statements(sql_text)
            # One transaction per script, so a failed or cancelled attempt leaves nothing
            # behind for the retry to trip over — unless the script manages its own.
            atomic = all(s.type != duckdb.StatementType.TRANSACTION for s in statements)
            if atomic:
                cur.begin()
            try:
                total: int | None = None
                last: StatementResult | None = None
                for statement in statements:
                    if stop is not None and stop.is_set():
                        raise ScriptInterrupted
                    names = statement.named_parameters
                    cur.execute(statement, {name: binds[name] for name in names if name in binds})
                    last = _statement_result(cur, statement.type, fetch_rows)
                    if last.rows_affected is not None:
                        total = (total or 0) + last.rows_affected
                if atomic:
                    cur.commit()
            except BaseException:
                if atomic:
                    _rollback(cur)
                raise
            return ScriptOutcome(statements=len(statements), rows_affected=total, last=last)
        finally:
            if own:
                cur.close()

    def export_table(
        self,
        table: str,
        path: Path,
        fmt: ExportFormat,
        *,
        cursor: duckdb.DuckDBPyConnection | None = None,
    ) -> int | None:
        """Write a table to a parquet or CSV (with header) file; returns the rows written."""
        options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER"
        # Both names are quoted; COPY takes neither as a bind parameter.
        sql = (
            f"COPY (SELECT * FROM {quote_identifier(table)}) "  # noqa: S608
            f"TO {quote_literal(str(path))} ({options})"
        )
        cur = self.cursor() if cursor is None else cursor
        try:
            cur.execute(sql)
            row = cur.fetchone()
            return int(row[0]) if row else None
        finally:
            if cursor is None:
                cur.close()

    def load_tables(
        self, files: dict[str, Path], *, cursor: duckdb.DuckDBPyConnection | None = None
    ) -> None:
        """Replace each table with the rows of its parquet or CSV file, in one transaction."""
        cur = self.cursor() if cursor is None else cursor
        try:
            cur.begin()
            try:
                for table, path in files.items():
                    reader = (
                        "read_parquet" if path.suffix.lower() == ".parquet" else "read_csv_auto"
                    )
                    if table.count(".") == 1:  # schema.table: the schema may be new here
                        schema = quote_identifier(table.split(".")[0])
                        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                    # The name is quoted; the path is a bind parameter.
                    cur.execute(
                        f"CREATE OR REPLACE TABLE {quote_identifier(table)} AS "  # noqa: S608
                        f"SELECT * FROM {reader}($path)",
                        {"path": str(path)},
                    )
                cur.commit()
            except BaseException:
                _rollback(cur)
                raise
        finally:
            if cursor is None:
                cur.close()

    def _run_bound(
        self,
        cur: duckdb.DuckDBPyConnection,
        statements: Sequence[BoundStatement],
        fetch_rows: int,
        atomic: bool,
        stop: threading.Event,
    ) -> list[StatementResult]:
        if atomic:
            cur.begin()
        try:
            results = []
            for statement in statements:
                if stop.is_set():
                    raise ScriptInterrupted
                (parsed,) = cur.extract_statements(statement.sql)
                cur.execute(parsed, statement.params)
                results.append(_statement_result(cur, parsed.type, fetch_rows))
            if atomic:
                cur.commit()
        except BaseException:
            if atomic:
                _rollback(cur)
            raise
        return results

    # -- async API (what executors use) -------------------------------------------------

    async def run_statements(
        self, statements: Sequence[BoundStatement], *, fetch_rows: int = 0, atomic: bool = True
    ) -> list[StatementResult]:
        """Run `?`-bound statements in a thread (one transaction if `atomic`), interruptibly."""
        stop = threading.Event()
        return await self.run_on_cursor(
            lambda cur: self._run_bound(cur, statements, fetch_rows, atomic, stop), stop=stop
        )

    async def run_script(
        self,
        sql_text: str,
        binds: dict[str, Any],
        *,
        search_path: Path | None = None,
        fetch_rows: int = 0,
    ) -> ScriptOutcome:
        """Run every statement of `sql_text` in a thread, in one transaction unless the script
        manages its own; cancellation interrupts it. DuckDB errors -> StepError."""
        stop = threading.Event()
        return await self.run_on_cursor(
            lambda cur: self._execute(sql_text, binds, cur, search_path, stop, fetch_rows),
            stop=stop,
        )

    async def run_export(self, table: str, path: Path, fmt: ExportFormat) -> int | None:
        """`export_table` in a thread; cancellation interrupts it. DuckDB errors -> StepError."""
        return await self.run_on_cursor(lambda cur: self.export_table(table, path, fmt, cursor=cur))

    async def run_load(self, files: dict[str, Path]) -> None:
        """`load_tables` in a thread; cancellation interrupts it. DuckDB errors -> StepError."""
        await self.run_on_cursor(lambda cur: self.load_tables(files, cursor=cur))

    async def missing_tables(self, names: Sequence[str]) -> list[str]:
        """The names (as a step's outputs give them) that are no table or view here."""

        def look(cur: duckdb.DuckDBPyConnection) -> list[str]:
            missing = []
            for name in names:
                try:
                    cur.table(name)  # a relation by name: no SQL text, nothing to inject
                except duckdb.Error:
                    missing.append(name)
            return missing

        return await self.run_on_cursor(look)

    async def table_versions(self) -> dict[str, tuple[int, int]]:
        """Every table of this database (`name`, or `schema.name` outside `main`) -> its
        (oid, estimated rows): a table created, replaced (new oid) or grown shows a change."""

        def look(cur: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, int]]:
            cur.execute(
                "SELECT schema_name, table_name, table_oid, estimated_size FROM duckdb_tables() "
                "WHERE database_name = current_database() AND NOT temporary"
            )
            return {
                (table if schema == "main" else f"{schema}.{table}"): (int(oid), int(size or 0))
                for schema, table, oid, size in cur.fetchall()
            }

        return await self.run_on_cursor(look)

    async def run_on_cursor(
        self,
        work: Callable[[duckdb.DuckDBPyConnection], T],
        *,
        stop: threading.Event | None = None,
    ) -> T:
        """Run blocking `work` on a fresh cursor in a thread, interruptibly."""
        stop = stop or threading.Event()
        cursor = self.cursor()
        task = asyncio.ensure_future(asyncio.to_thread(work, cursor))
        try:
            # asyncio.wait, not `await task`: a cancellation must not abandon the thread
            # while it still uses the cursor.
            await asyncio.wait({task})
            return task.result()
        except asyncio.CancelledError:
            stop.set()
            await _interrupt_until_done(cursor, task)
            raise
        except duckdb.Error as exc:
            raise classify_error(exc) from exc
        finally:
            if task.done():
                cursor.close()
            # else: a second cancellation cut the wait short; the thread still owns the cursor
            # and closes with the parent connection.


async def _interrupt_until_done(
    cursor: duckdb.DuckDBPyConnection, task: asyncio.Future[Any]
) -> None:
    """Interrupt until the thread returns: an interrupt sent between statements is lost."""
    cancels = 0
    while not task.done():
        cursor.interrupt()
        try:
            await asyncio.wait({task}, timeout=_INTERRUPT_POLL_SECONDS)
        except asyncio.CancelledError:
            cancels += 1  # already stopping; keep going so the cursor is released
            if cancels > 3:
                raise
    if not task.cancelled():
        task.exception()  # retrieved: the interrupt error is expected, not "never retrieved"


def _changed_rows(cursor: duckdb.DuckDBPyConnection, kind: duckdb.StatementType) -> int | None:
    if kind not in _COUNTING:
        return None
    description = cursor.description
    if not description or len(description) != 1 or description[0][0] != "Count":
        return None  # e.g. INSERT ... RETURNING
    row = cursor.fetchone()
    return int(row[0]) if row else None


def _statement_result(
    cur: duckdb.DuckDBPyConnection, kind: duckdb.StatementType, fetch_rows: int
) -> StatementResult:
    description = cur.description
    if not description:
        return StatementResult()
    if kind in _COUNTING:
        return StatementResult(rows_affected=_changed_rows(cur, kind))
    rows = cur.fetchmany(fetch_rows + 1) if fetch_rows else []
    return StatementResult(
        columns=[d[0] for d in description],
        rows=[list(r) for r in rows[:fetch_rows]],
        truncated=len(rows) > fetch_rows,
    )


def _rollback(cursor: duckdb.DuckDBPyConnection) -> None:
    # The transaction may already be gone (e.g. the connection was invalidated).
    with contextlib.suppress(duckdb.Error):
        cursor.rollback()
