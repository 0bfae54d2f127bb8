"""A PostgreSQL that refuses connections ("too many connections" for the API's role, here a
role with CONNECTION LIMIT 1 whose one connection someone else holds): the API answers 503
with a problem body and Retry-After, not a 500 and a stack trace; once a connection is free
again it answers as usual."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from pipeline_service.api.app import create_app
from pipeline_service.db.migrate import upgrade
from pipeline_service.db.session import make_engine
from pipeline_service.settings import ServiceSettings
from tests.conftest import POSTGRES_URL, scratch_postgres_database

ADMIN = "admin-" + uuid.uuid4().hex


@pytest.fixture
def limited_url() -> Iterator[str]:
    """A migrated scratch database owned by a new role that may hold one connection."""
    role = f"laminar_limited_{uuid.uuid4().hex[:8]}"
    admin_dsn = make_url(POSTGRES_URL).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    try:
        with scratch_postgres_database() as url:
            database = make_url(url).database
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
            limited = make_url(url).set(username=role).render_as_string(False)
            engine = make_engine(limited)
            try:
                upgrade(engine)
            finally:
                engine.dispose()
            yield limited
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


async def test_too_many_connections_answers_503_with_retry_after(
    limited_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ServiceSettings(
        database_url=limited_url,
        admin_api_key=SecretStr(ADMIN),
        work_dir=tmp_path / "work",
        temporal_address="127.0.0.1:1",  # nothing here needs Temporal
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://laminar.test") as http:
        # The role's one connection, held elsewhere: the API's pool cannot connect.
        holder = psycopg.connect(
            make_url(limited_url).set(drivername="postgresql").render_as_string(False)
        )
        try:
            with caplog.at_level(logging.WARNING):
                refused = await http.get("/v1/tenants", headers=admin)
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert int(refused.headers["retry-after"]) > 0
            body = refused.json()
            assert body["status"] == 503 and body["instance"] == "/v1/tenants"
            assert "try again" in body["detail"]
            assert "Traceback" not in caplog.text
            assert "too many connections" in caplog.text  # the database's words, in the log
        finally:
            holder.close()
        answered = await http.get("/v1/tenants", headers=admin)
        assert answered.status_code == 200, answered.text
    app.state.services.engine.dispose()
