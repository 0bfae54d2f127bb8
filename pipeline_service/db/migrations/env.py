"""Alembic environment: runs on the connection `pipeline_service.db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from pipeline_service.db import models

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=models.Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
