"""Persistence: SQLAlchemy 2.0 models, sessions, repositories and Alembic migrations."""
