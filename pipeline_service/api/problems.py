"""Errors as RFC 9457 problem bodies (`application/problem+json`), never stack traces."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

DATABASE_RETRY_AFTER = 5
"""Seconds a client is asked to wait when the database refuses connections (Retry-After)."""


class ProblemBody(BaseModel):
    """RFC 9457 problem details; invalid input adds `errors` (path, message, line, column)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _SCHEMA_REF}}}


_SCHEMA_REF = {"$ref": "#/components/schemas/ProblemBody"}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _problem("Bad request"),
    401: _problem("No API key, or not a valid one"),
    403: _problem("The key's scope does not allow this"),
    404: _problem("Not found (or another tenant's)"),
    409: _problem("Conflicts with the object's state"),
    413: _problem("Request body over the size limit"),
    422: _problem("Invalid request or definition: `errors` lists every problem"),
    500: _problem("Internal error"),
    503: _problem("Temporal or the database is unavailable"),
}
"""Documented on every operation, so clients (and schemathesis) know the error shape."""


class ProblemError(Exception):
    """An error the API answers with a problem body; `extra` adds members (e.g. `errors`)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers
        self.extra = extra


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **({"instance": instance} if instance else {}),
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def not_found(what: str) -> ProblemError:
    return ProblemError(404, f"{what} not found")


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.detail,
            title=exc.title,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(
            exc.status_code,
            str(exc.detail),
            instance=request.url.path,
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"path": _location(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:5])
        return problem_response(
            422, f"the request is not valid: {summary}", instance=request.url.path, errors=errors
        )

    @app.exception_handler(PoolTimeoutError)
    @app.exception_handler(OperationalError)
    async def on_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        reason = database_unavailable(exc)
        if reason is None:
            return await on_unexpected(request, exc)
        # One line, no traceback: the cause is outside this process.
        log.warning(
            "database unavailable on %s %s: %s",
            request.method,
            request.url.path,
            str(getattr(exc, "orig", None) or exc).strip().replace("\n", " "),
        )
        return problem_response(
            503,
            f"the database is not taking requests now ({reason}); try again shortly",
            instance=request.url.path,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            "internal error; the server log has the details",
            instance=request.url.path,
        )


def database_unavailable(exc: Exception) -> str | None:
    """Why the database cannot serve now (it refuses or drops connections, e.g. "too many
    clients"; the connection pool is exhausted; SQLite is locked by another writer), or None
    when `exc` is some other error (a bug: 500)."""
    if isinstance(exc, PoolTimeoutError):
        return "every pooled connection is in use"
    if not isinstance(exc, OperationalError):
        return None
    if exc.connection_invalidated:
        return "the connection was lost"
    original = exc.orig
    module = type(original).__module__
    if module.startswith("psycopg"):
        # psycopg's OperationalError: connection failures, too many clients, shutdown,
        # SQLSTATE classes 08 (connection), 53 (resources), 57 (operator intervention: also a
        # cancelled statement) and 40 (a transaction rolled back: deadlock, serialization).
        # All pass; trying again is the remedy for each. The answer names no host or role;
        # the server log has the database's own words.
        return "it refuses connections, is overloaded or rolled the transaction back"
    if module == "sqlite3" and "locked" in str(original):
        return "another writer holds the SQLite database"
    return None
