"""A STAND-IN for a Trino coordinator, for tests only: Trino cannot be installed here.

It speaks enough of Trino's client REST protocol for the real `trino` client: `POST
/v1/statement`, `GET` of the `nextUri` until the query is done, and `DELETE` of the `nextUri`
(the client's cancel). It checks the user/catalog/schema headers and, when configured, Basic
authentication. Queries run on an in-memory DuckDB after sqlglot translates them from Trino's
dialect (`EXECUTE IMMEDIATE '...' USING ...`, which the client sends for parameters, included).

It is not Trino: types, errors and semantics are only as close as these tests need, which is
why the project's tests say what they prove (the adapter's protocol handling) and no more.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb
import sqlglot

_EXECUTE_IMMEDIATE = re.compile(
    r"^\s*EXECUTE\s+IMMEDIATE\s+'((?:[^']|'')*)'(?:\s+USING\s+(.*))?$", re.S | re.I
)
_POLL_WAIT_SECONDS = 0.2


@dataclass
class StandInQuery:
    id: str
    sql: str
    headers: dict[str, str]
    state: str = "QUEUED"
    columns: list[dict[str, Any]] | None = None
    rows: list[list[Any]] = field(default_factory=list)
    update_type: str | None = None
    update_count: int | None = None
    error: dict[str, Any] | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    cursor: duckdb.DuckDBPyConnection | None = None


class TrinoStandIn:
    """Serve the stand-in on a loopback port; `queries` records every statement received."""

    def __init__(self, *, password: str | None = None, user: str = "laminar") -> None:
        self.user = user
        self.password = password
        self.database = duckdb.connect(":memory:")
        self.queries: list[StandInQuery] = []
        self.cancels: list[str] = []
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TrinoStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.database.interrupt()
        self.database.close()

    def statements(self) -> list[str]:
        return [q.sql for q in self.queries]

    # -- query execution ------------------------------------------------------------------

    def _start(self, sql: str, headers: dict[str, str]) -> StandInQuery:
        query = StandInQuery(id=uuid.uuid4().hex[:16], sql=sql, headers=headers)
        with self._lock:
            self.queries.append(query)
        threading.Thread(target=self._run, args=(query,), daemon=True).start()
        return query

    def _run(self, query: StandInQuery) -> None:
        cursor = self.database.cursor()
        query.cursor = cursor
        query.state = "RUNNING"
        try:
            sql = _inline_execute_immediate(query.sql)
            (translated,) = sqlglot.transpile(sql, read="trino", write="duckdb")
            cursor.execute(translated)
            kind = sqlglot.parse_one(sql, read="trino")
            if isinstance(kind, sqlglot.exp.Insert | sqlglot.exp.Create | sqlglot.exp.Delete):
                row = cursor.fetchone()
                query.update_type = type(kind).__name__.upper()
                query.update_count = int(row[0]) if row and row[0] is not None else 0
                query.columns = [_column("rows", "BIGINT")]
                query.rows = [[query.update_count]]
            else:
                description = cursor.description or []
                query.columns = [_column(d[0], str(d[1])) for d in description]
                query.rows = [[_json(v) for v in r] for r in cursor.fetchall()]
            query.state = "FINISHED"
        except duckdb.InterruptException:
            query.state = "FAILED"
            query.error = _error("USER_CANCELED", "Query was canceled", "USER_ERROR")
        except Exception as exc:
            query.state = "FAILED"
            query.error = _error("SYNTAX_ERROR", str(exc).splitlines()[0], "USER_ERROR")
        finally:
            cursor.close()
            query.done.set()

    def _cancel(self, query: StandInQuery) -> None:
        query.cancelled = True
        self.cancels.append(query.id)
        if query.cursor is not None and not query.done.is_set():
            query.cursor.interrupt()

    def _find(self, query_id: str) -> StandInQuery | None:
        with self._lock:
            return next((q for q in self.queries if q.id == query_id), None)

    # -- HTTP -------------------------------------------------------------------------------

    def _body(self, query: StandInQuery, token: int) -> dict[str, Any]:
        base = f"http://127.0.0.1:{self.port}"
        body: dict[str, Any] = {
            "id": query.id,
            "infoUri": f"{base}/ui/query.html?{query.id}",
            "stats": {"state": query.state, "queued": query.state == "QUEUED"},
        }
        if query.error is not None:
            body["error"] = query.error
            body["stats"]["state"] = "FAILED"
            return body
        if query.done.is_set():
            body["columns"] = query.columns
            if query.rows:
                body["data"] = query.rows
            if query.update_type:
                body["updateType"] = query.update_type
                body["updateCount"] = query.update_count
            return body
        body["nextUri"] = f"{base}/v1/statement/executing/{query.id}/{token + 1}"
        return body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                header = self.headers.get("Authorization")
                standin.auth_headers.append(header)
                if standin.password is None:
                    return True
                expected = base64.b64encode(f"{standin.user}:{standin.password}".encode()).decode()
                return header == f"Basic {expected}"

            def do_POST(self) -> None:
                if self.path != "/v1/statement":
                    return self._send(404, {"message": "not found"})
                if not self._authorized():
                    return self._send(401, {"message": "Unauthorized"})
                sql = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                headers = {
                    k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"
                }
                query = standin._start(sql, headers)
                self._send(200, standin._body(query, 0))

            def _query(self) -> tuple[StandInQuery | None, int]:
                parts = self.path.strip("/").split("/")
                if len(parts) != 5 or parts[:3] != ["v1", "statement", "executing"]:
                    return None, 0
                return standin._find(parts[3]), int(parts[4])

            def do_GET(self) -> None:
                query, token = self._query()
                if query is None:
                    return self._send(404, {"message": "no such query"})
                query.done.wait(_POLL_WAIT_SECONDS)
                self._send(200, standin._body(query, token))

            def do_DELETE(self) -> None:
                query, _ = self._query()
                if query is None:
                    return self._send(404, {"message": "no such query"})
                standin._cancel(query)
                self._send(204)

        return Handler


def _inline_execute_immediate(sql: str) -> str:
    """`EXECUTE IMMEDIATE 'stmt' USING a, b` -> stmt with its `?`s replaced by the values."""
    match = _EXECUTE_IMMEDIATE.match(sql)
    if match is None:
        return sql
    statement = match.group(1).replace("''", "'")
    if not match.group(2):
        return statement
    values = sqlglot.parse_one(f"SELECT {match.group(2)}", read="trino").expressions
    placeholders = iter(values)
    tree = sqlglot.parse_one(statement, read="trino")
    tree = tree.transform(
        lambda node: (
            next(placeholders).copy() if isinstance(node, sqlglot.exp.Placeholder) else node
        )
    )
    return tree.sql(dialect="trino")


_TRINO_TYPES = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "HUGEINT": "bigint",
    "DOUBLE": "double",
    "FLOAT": "real",
    "BOOLEAN": "boolean",
    "DATE": "date",
    "VARCHAR": "varchar",
}


def _column(name: str, duck_type: str) -> dict[str, Any]:
    kind = _TRINO_TYPES.get(duck_type.upper(), "varchar")
    if duck_type.upper().startswith("DECIMAL"):
        kind = "double"
    arguments: list[dict[str, Any]] = []
    if kind == "varchar":
        arguments = [{"kind": "LONG", "value": 2147483647}]
    if duck_type.upper().startswith("TIMESTAMP"):
        kind, arguments = "timestamp", [{"kind": "LONG", "value": 6}]
    name_of_type = f"{kind}(6)" if kind == "timestamp" else kind
    return {
        "name": name,
        "type": name_of_type,
        "typeSignature": {"rawType": kind, "arguments": arguments},
    }


def _json(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def _error(name: str, message: str, kind: str) -> dict[str, Any]:
    return {
        "message": message,
        "errorCode": 1,
        "errorName": name,
        "errorType": kind,
        "failureInfo": {"type": "io.trino.spi.TrinoException", "message": message, "stack": []},
    }
