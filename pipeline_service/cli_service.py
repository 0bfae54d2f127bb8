"""`laminar server`, `laminar worker` and `laminar db upgrade`: the platform's processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from pipeline_service.metrics import MULTIPROC_ENV
from pipeline_service.settings import ServiceSettings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from sqlalchemy import Engine
    from temporalio.client import Client

    from pipeline_service.storage.artifacts import ArtifactStorage

console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

db_app = typer.Typer(help="The service database.", no_args_is_help=True)


def _settings() -> ServiceSettings:
    try:
        return ServiceSettings()
    except ValidationError as exc:
        errors.print("[bold red]bad settings:[/]")
        for error in exc.errors():
            errors.print(f"  LAMINAR_{'__'.join(map(str, error['loc'])).upper()}: {error['msg']}")
        raise typer.Exit(2) from None


def service_settings() -> ServiceSettings:
    """The settings of a long-running process, with its logs configured (service_logging.py)."""
    from pipeline_service.service_logging import configure_service_logging

    settings = _settings()
    configure_service_logging(settings)
    return settings


def artifact_storage(settings: ServiceSettings) -> ArtifactStorage | None:
    """The artifact store of LAMINAR_ARTIFACT_URL, or None; exits with why if unusable."""
    from pipeline_service.storage.artifacts import ArtifactStorage
    from pipeline_service.storage.store import StorageError

    if not settings.artifact_url:
        return None
    try:
        return ArtifactStorage(settings.artifact_url, s3_endpoint=settings.s3_endpoint)
    except StorageError as exc:
        raise _fail(f"LAMINAR_ARTIFACT_URL: {exc}") from None


def _fail(message: str) -> typer.Exit:
    errors.print(f"[bold red]{message}[/]", highlight=False)
    return typer.Exit(2)


async def _connect_temporal(settings: ServiceSettings) -> Client:
    """A client of the settings' Temporal; ConnectionError naming the address if unreachable."""
    from pipeline_service.temporal.client import connect

    try:
        return await asyncio.wait_for(
            connect(settings.temporal_address, settings.temporal_namespace), timeout=15
        )
    except Exception as exc:
        raise ConnectionError(
            f"cannot reach Temporal at {settings.temporal_address}: {exc}"
        ) from None


@db_app.command("upgrade")
def db_upgrade(
    search_attributes: Annotated[
        bool,
        typer.Option(
            "--search-attributes/--no-search-attributes",
            help="Also register Laminar's search attributes on the Temporal namespace.",
        ),
    ] = True,
) -> None:
    """Migrate the database to the newest schema (LAMINAR_DATABASE_URL) and register the
    search attributes Laminar's workflows carry (LaminarTenant, LaminarPipeline)."""
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline_service.db.migrate import current_revision, upgrade
    from pipeline_service.db.session import make_engine

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
    except SQLAlchemyError as exc:
        raise _fail(f"cannot migrate {engine.url!r}: {exc.__class__.__name__}: {exc}") from None
    finally:
        engine.dispose()
    console.print(f"database {engine.url!r}: {before or 'empty'} -> {after}")
    if search_attributes:
        try:
            added = asyncio.run(_register_search_attributes(settings))
        except Exception as exc:
            raise _fail(
                f"cannot register search attributes on Temporal at {settings.temporal_address} "
                f"(namespace {settings.temporal_namespace}): {exc}"
            ) from None
        console.print(
            f"temporal namespace {settings.temporal_namespace}: search attributes "
            + (", ".join(added) + " added" if added else "already registered")
        )


@db_app.command("check")
def db_check(
    wait: Annotated[
        float,
        typer.Option(min=0, help="Seconds to keep checking until it is (a deploy's init step)."),
    ] = 0,
) -> None:
    """Exit 0 when the database is at the newest schema, 2 otherwise (after --wait seconds)."""
    import time

    from pipeline_service.db.migrate import current_revision, head_revision
    from pipeline_service.db.session import make_engine

    settings = _settings()
    engine = make_engine(settings.database_url)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                revision: str | None = current_revision(engine)
                problem = f"at schema {revision or '(empty)'}, not {head_revision()}"
            except Exception as exc:  # not reachable yet: a deploy's database may start late
                revision, problem = None, f"unreachable: {type(exc).__name__}"
            if revision == head_revision():
                console.print(f"database {engine.url!r}: at schema {revision}")
                return
            if time.monotonic() >= deadline:
                raise _fail(f"database {engine.url!r}: {problem} (run `laminar db upgrade`)")
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    finally:
        engine.dispose()


async def _register_search_attributes(settings: ServiceSettings) -> list[str]:
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import (
        AddSearchAttributesRequest,
        ListSearchAttributesRequest,
    )

    from pipeline_service.temporal.client import connect
    from pipeline_service.temporal.dev_server import SEARCH_ATTRIBUTES

    client = await asyncio.wait_for(
        connect(settings.temporal_address, settings.temporal_namespace), timeout=10
    )
    namespace = settings.temporal_namespace
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    missing = {
        name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for name, kind in SEARCH_ATTRIBUTES.items()
        if name not in known and kind == "Keyword"
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    return sorted(missing)


def server(
    host: Annotated[str | None, typer.Option(help="Interface (LAMINAR_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (LAMINAR_HTTP_PORT, 8092).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Server processes, each serving the whole API (LAMINAR_SERVER_WORKERS, 1)."
        ),
    ] = None,
) -> None:
    """Serve the REST API (OpenAPI at /docs) over LAMINAR_DATABASE_URL and Temporal."""
    import uvicorn

    from pipeline_service.api.app import create_app
    from pipeline_service.db.migrate import current_revision, head_revision
    from pipeline_service.db.session import make_engine
    from pipeline_service.service_logging import service_log_config

    settings = service_settings()
    engine = make_engine(settings.database_url)
    try:
        revision = current_revision(engine)
    except Exception as exc:
        raise _fail(f"cannot reach the database {engine.url!r}: {exc}") from None
    finally:
        engine.dispose()
    if revision != head_revision():
        raise _fail(
            f"the database {engine.url!r} is at schema {revision or '(empty)'}, not "
            f"{head_revision()}: run `laminar db upgrade` first"
        )
    artifact_storage(settings)  # an unusable LAMINAR_ARTIFACT_URL stops here, said plainly
    if settings.admin_api_key is None:
        errors.print(
            "[yellow]LAMINAR_ADMIN_API_KEY is not set: no one can create tenants or keys[/]"
        )
    console.print(
        f"laminar API on http://{host or settings.http_host}:{port or settings.http_port} "
        f"(docs at /docs); database {engine.url!r}; temporal {settings.temporal_address}"
    )
    workers = workers or settings.server_workers
    with metrics_directory(workers):
        uvicorn.run(
            create_app(settings, dispatch=True)
            if workers == 1
            else "pipeline_service.api.app:app_from_settings",
            factory=workers > 1,
            workers=workers if workers > 1 else None,
            host=host or settings.http_host,
            port=port or settings.http_port,
            log_config=service_log_config(settings),
            log_level=None,  # the config's: LAMINAR_LOG_LEVEL
            access_log=False,
        )


@contextlib.contextmanager
def metrics_directory(workers: int) -> Iterator[None]:
    """With several server processes, prometheus-client's multiprocess mode: each process
    writes its counts under PROMETHEUS_MULTIPROC_DIR (a fresh directory, or the operator's)
    and /metrics, answered by any one of them, sums them all."""
    if workers == 1 or os.environ.get(MULTIPROC_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="laminar-metrics-") as directory:
        os.environ[MULTIPROC_ENV] = directory  # read by the worker processes at import
        try:
            yield
        finally:
            del os.environ[MULTIPROC_ENV]


def worker(
    max_concurrent_steps: Annotated[int, typer.Option(help="Steps this worker runs at once.")] = 32,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve this worker's /metrics (step durations) here.")
    ] = None,
) -> None:
    """Run pipeline workflows and their steps from the task queue; any number may run."""
    settings = service_settings()
    artifacts = artifact_storage(settings)
    try:
        asyncio.run(_worker(settings, max_concurrent_steps, metrics_port, artifacts))
    except ConnectionError as exc:
        raise _fail(str(exc)) from None


async def _worker(
    settings: ServiceSettings,
    max_concurrent_steps: int,
    metrics_port: int | None,
    artifacts: ArtifactStorage | None,
) -> None:
    from activities.recording import AttemptRecorder
    from pipeline_service.db.session import make_engine, session_factory
    from pipeline_service.temporal.worker import build_worker
    from steps.engines.duckdb import DuckDBEngine

    client = await _connect_temporal(settings)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    db = make_engine(settings.database_url)
    warehouse = DuckDBEngine(settings.work_dir / "warehouse.duckdb")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    metrics = None
    registry = None
    if metrics_port is not None:
        from prometheus_client import CollectorRegistry, start_http_server

        from pipeline_service.metrics import StepMetrics

        registry = CollectorRegistry()
        metrics = StepMetrics(registry)
        start_http_server(metrics_port, addr=settings.http_host, registry=registry)
    relay = _start_relay(settings, db, registry)
    # Workers dispatch waiting runs too: runs start when slots free even with no server up.
    from pipeline_service.dispatcher import RunDispatcher

    async def temporal_client() -> Client:
        return client

    sessions = session_factory(db)
    dispatcher = RunDispatcher(
        sessions,
        temporal_client,
        task_queue=settings.task_queue,
        source_dir=settings.source_dir,
        bundle_cache=settings.bundle_cache,
    )
    attempts = AttemptRecorder(sessions, metrics)  # flushed at stop, below
    worker_ = build_worker(
        client,
        task_queue=settings.task_queue,
        engine=warehouse,
        work_root=settings.work_dir,
        max_concurrent_activities=max_concurrent_steps,
        sessions=sessions,
        metrics=metrics,
        attempts=attempts,
        source_dir=settings.source_dir,
        secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
        bundle_cache=settings.bundle_cache,
        artifacts=artifacts,
        log_upload_every=settings.artifact_log_interval,
        s3_endpoint=settings.s3_endpoint,
    )
    console.print(
        f"laminar worker on task queue {settings.task_queue} (temporal "
        f"{settings.temporal_address}, namespace {settings.temporal_namespace}); Ctrl-C stops"
    )
    reconciler = _start_reconciler(settings, client, db, stop)
    notifier = _start_notifier(settings, db)
    triggers = _start_triggers(settings, client, db, stop)
    try:
        async with worker_:
            await dispatcher.run(stop)
    finally:
        # The steps that ended during the shutdown grace queued their attempts' ends: written
        # now, not when their workflows next record on another worker (bounded: the database
        # may be what is gone).
        if unwritten := await attempts.flush():
            console.print(
                f"[yellow]stopping: {unwritten} step attempt event(s) not written (the database "
                "does not answer); their runs write them again when a worker next runs them[/]"
            )
        if notifier is not None:
            notifier_stop, notifier_thread = notifier
            notifier_stop.set()
            await asyncio.to_thread(notifier_thread.join, 10)
        for task in (reconciler, triggers):
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 15)
        if relay is not None:
            relay_stop, relay_thread = relay
            relay_stop.set()
            await asyncio.to_thread(relay_thread.join, 10)
        with contextlib.suppress(Exception):
            warehouse.close()
        db.dispose()


def _start_triggers(
    settings: ServiceSettings, client: Client, db: Engine, stop: asyncio.Event
) -> asyncio.Task[None] | None:
    """With Kafka configured, the worker consumes the tenants' Kafka triggers (one consumer
    group per tenant, shared by all workers)."""
    if not settings.kafka_bootstrap_servers:
        return None
    from pipeline_service.db.session import session_factory
    from pipeline_service.events.triggers import TenantTriggers

    triggers = TenantTriggers(
        session_factory(db),
        client,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        task_queue=settings.task_queue,
        source_dir=settings.source_dir,
        kafka_config=dict(settings.kafka_config),
        refresh_every=max(settings.triggers_refresh.total_seconds(), 0.5),
    )
    console.print(
        "kafka triggers: one consumer group per tenant with triggers "
        f"(re-read every {settings.triggers_refresh.total_seconds():g}s)"
    )
    return asyncio.create_task(triggers.run(stop), name="kafka-triggers")


def _start_reconciler(
    settings: ServiceSettings, client: Client, db: Engine, stop: asyncio.Event
) -> asyncio.Task[None] | None:
    """Records the end of runs Temporal ended on its own; on PostgreSQL one worker at a time
    does a round (see reconciler.py)."""
    if settings.reconcile_interval.total_seconds() <= 0:
        return None
    from pipeline_service.db.session import session_factory
    from pipeline_service.reconciler import RunReconciler

    reconciler = RunReconciler(session_factory(db), client, older_than=settings.reconcile_after)
    return asyncio.create_task(reconciler.run(stop, settings.reconcile_interval))


def _start_notifier(
    settings: ServiceSettings, db: Engine
) -> tuple[threading.Event, threading.Thread] | None:
    """Pipeline notifications and SLA checks from the outbox (events/notifier.py); several
    workers on PostgreSQL share the work."""
    if settings.notify_interval.total_seconds() <= 0:
        return None
    from pipeline_service.db.session import session_factory
    from pipeline_service.events.notifier import start_notifier
    from schemas.connections import ResourceError

    try:
        _, stop, thread = start_notifier(
            session_factory(db),
            secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
            poll=settings.notify_interval.total_seconds(),
        )
    except ResourceError as exc:
        raise _fail(str(exc)) from None
    return stop, thread


def _start_relay(
    settings: ServiceSettings, db: Engine, registry: CollectorRegistry | None
) -> tuple[threading.Event, threading.Thread] | None:
    """With Kafka configured, the worker relays the outbox too (on a thread: the producer and
    the database session block). Several workers on PostgreSQL take turns; see events/relay.py."""
    if not settings.kafka_bootstrap_servers:
        return None
    from pipeline_service.events.metrics import RelayMetrics
    from pipeline_service.events.relay import EventRelay

    relay = EventRelay(
        db, settings, metrics=RelayMetrics(registry) if registry is not None else None
    )
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), name="events-relay", daemon=True)
    thread.start()
    console.print(
        f"events relay -> {settings.kafka_bootstrap_servers} topic {settings.events_topic}"
    )
    return stop, thread


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.command()(server)
    app.command()(worker)
