"""The REST API (FastAPI): routers per resource, aggregated in app.py."""
