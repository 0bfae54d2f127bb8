"""End-to-end fixtures: the `laminar` console script as a user runs it, in real subprocesses.

Every test gets its own HOME (so the default state dir never touches the real user's), no
inherited `LAMINAR_*` variables, and a wide console (rich wraps long lines at 80 columns when
output is not a terminal, which would split the messages the tests look for). After each test,
no process started from the test's tmp_path may survive: the `cli` fixture kills the laminar
processes it started, then fails the test if a Temporal server (or a step script) for that
tmp_path is still running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import psutil
import pytest

LAMINAR = Path(sys.executable).parent / "laminar"
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def details(self) -> str:
        """Everything about the run, for assert messages (pytest truncates reprs)."""
        return (
            f"exit {self.code} after {self.elapsed:.1f}s\n--- stdout ---\n{self.stdout}"
            f"\n--- stderr ---\n{self.stderr}"
        )


class Background:
    """A `laminar` process running in the background; its output goes to files."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path, started: float):
        self.proc = proc
        self.pid = proc.pid
        self._out, self._err, self._started = out, err, started

    def output(self) -> str:
        return self._out.read_text(errors="replace") + self._err.read_text(errors="replace")

    def wait(self, timeout: float) -> Result:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"laminar did not exit within {timeout}s; output so far:\n{self.output()}")
        return Result(
            code,
            self._out.read_text(errors="replace"),
            self._err.read_text(errors="replace"),
            time.monotonic() - self._started,
        )


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.home = tmp_path / "home"
        self.home.mkdir(exist_ok=True)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs = 0

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINAR_")}
        env.update(
            HOME=str(self.home),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            COLUMNS="250",
            NO_COLOR="1",
            TERM="dumb",
        )
        env.update(extra or {})
        return env

    def run(
        self,
        *args: str | Path,
        timeout: float = 90,
        input: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        """Run `laminar ARGS` to completion (killed and failed after `timeout` seconds)."""
        started = time.monotonic()
        proc = self._popen(args, env, cwd, subprocess.PIPE, subprocess.PIPE)
        try:
            out, err = proc.communicate(
                input.encode(errors="surrogateescape") if input is not None else None, timeout
            )
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
            pytest.fail(
                f"laminar {' '.join(map(str, args))} did not exit within {timeout}s:\n"
                f"{out.decode(errors='replace')}{err.decode(errors='replace')}"
            )
        return Result(
            proc.returncode,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
            time.monotonic() - started,
        )

    def start(
        self, *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Background:
        """Start `laminar ARGS` in the background (killed at the end of the test if need be)."""
        self._logs += 1
        out = self.tmp_path / f"laminar-{self._logs}.out"
        err = self.tmp_path / f"laminar-{self._logs}.err"
        with out.open("wb") as out_file, err.open("wb") as err_file:
            started = time.monotonic()
            proc = self._popen(args, env, cwd, out_file, err_file)
        return Background(proc, out, err, started)

    def _popen(
        self,
        args: tuple[str | Path, ...],
        env: dict[str, str] | None,
        cwd: Path | None,
        stdout: int | IO[bytes],
        stderr: int | IO[bytes],
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(LAMINAR), *map(str, args)],
            stdin=subprocess.PIPE if stdout == subprocess.PIPE else subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=self.env(env),
            cwd=cwd or self.tmp_path,
        )
        self._procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def processes_under(path: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line mentions `path`, except this one."""
    needle = str(path)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(needle in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def temporal_servers_under(path: Path) -> list[psutil.Process]:
    servers = []
    for proc in processes_under(path):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            cmdline = proc.cmdline()
            if Path(cmdline[0]).name == "temporal" and "server" in cmdline:
                servers.append(proc)
    return servers


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def api_up(base: str, path: str = "/health/ready") -> Callable[[], bool]:
    """A condition for `wait_for`: the API at `base` answers 200 on `path`."""

    def up() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}{path}").status_code == 200
        return False

    return up


E2E_ADMIN_KEY = "e2e-admin-key"


def sqlite_server_with_tenant(
    cli: Cli, tmp_path: Path, scope: str, port: int
) -> tuple[Background, dict[str, str]]:
    """`laminar db upgrade` and `laminar server` on a SQLite file (no Temporal: nothing these
    callers do needs it), a tenant `acme` and a key of `scope`: the server and the environment
    of the CLI client acting as that tenant."""
    from pipeline_service.temporal.dev_server import free_port

    env = {
        "LAMINAR_DATABASE_URL": f"sqlite:///{tmp_path / 'laminar.db'}",
        "LAMINAR_ADMIN_API_KEY": E2E_ADMIN_KEY,
        "LAMINAR_HTTP_PORT": str(port),
        "LAMINAR_SECRET_KEY": "e2e-secret-key-0123456789",
        "LAMINAR_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing waits: not needed
    }
    upgraded = cli.run("db", "upgrade", "--no-search-attributes", env=env)
    assert upgraded.code == 0, upgraded.details
    server = cli.start("server", env=env)
    base = f"http://127.0.0.1:{port}"
    wait_for(api_up(base, "/health/live"), 60, f"the API; server said:\n{server.output()}")
    admin = {"LAMINAR_URL": base, "LAMINAR_API_KEY": E2E_ADMIN_KEY}
    assert cli.run("tenants", "create", "acme", env=admin).code == 0
    made = cli.run("keys", "create", "ops", "--tenant", "acme", "--scope", scope, env=admin)
    assert made.code == 0, made.details
    return server, {"LAMINAR_URL": base, "LAMINAR_API_KEY": made.stdout.strip().splitlines()[-1]}


@dataclass
class Platform:
    """`laminar server` and `laminar worker` processes on one task queue, over a scratch
    PostgreSQL database and the session's Temporal dev server, with a tenant `acme` and an
    `operate` key. The server runs in `tmp_path/server`, each worker in `tmp_path/<name>` (its
    own empty directory, work dir and bundle cache: it has never seen the pipelines' files)."""

    cli: Cli
    tmp_path: Path
    env: dict[str, str]
    """The processes' environment (database, Temporal, admin key, port, task queue, extras)."""
    base: str
    workers: dict[str, Background]
    client_env: dict[str, str]
    """The CLI client's environment acting as the tenant (LAMINAR_URL, LAMINAR_API_KEY)."""
    server: Background = field(init=False)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.client_env['LAMINAR_API_KEY']}"}

    def http(self) -> httpx.Client:
        """An API client acting as the tenant."""
        return httpx.Client(base_url=self.base, headers=self.auth, timeout=30)

    def start_server(self) -> Background:
        """Start (or start again) the server in `tmp_path/server`; ready once `wait_ready`."""
        home = self.tmp_path / "server"
        home.mkdir(exist_ok=True)
        self.server = self.cli.start(
            "server",
            env={
                **self.env,
                "LAMINAR_WORK_DIR": str(home / "work"),
                "LAMINAR_BUNDLE_CACHE": str(home / "bundles"),
            },
            cwd=home,
        )
        return self.server

    def wait_ready(self) -> None:
        wait_for(api_up(self.base), 60, f"the API; server said:\n{self.server.output()}")

    def start_worker(self, name: str) -> Background:
        """Start (or start again) worker `name` in its own directory."""
        home = self.tmp_path / name
        home.mkdir(exist_ok=True)
        self.workers[name] = self.cli.start(
            "worker",
            env={
                **self.env,
                "LAMINAR_WORK_DIR": str(home / "work"),
                "LAMINAR_BUNDLE_CACHE": str(home / "bundles"),
            },
            cwd=home,
        )
        return self.workers[name]

    def stop_worker(self, name: str, signum: int = signal.SIGTERM, timeout: float = 30) -> Result:
        self.workers[name].proc.send_signal(signum)
        return self.workers[name].wait(timeout)

    def stop(self, *alive: str) -> None:
        """SIGTERM the server and the workers named (the others were killed or stopped)."""
        self.server.proc.send_signal(signal.SIGTERM)
        for name in alive:
            self.workers[name].proc.send_signal(signal.SIGTERM)
        for name in alive:
            self.workers[name].wait(30)
        self.server.wait(30)


@contextlib.contextmanager
def running_platform(
    cli: Cli,
    temporal_address: str,
    tmp_path: Path,
    workers: tuple[str, ...] = ("w1", "w2"),
    env: dict[str, str] | None = None,
) -> Iterator[Platform]:
    """`laminar db upgrade`, then the server and `workers` (see `Platform`), with `env` added
    to every process's environment; the database is dropped on exit."""
    from pipeline_service.temporal.dev_server import free_port
    from tests.conftest import scratch_postgres_database

    port = free_port()
    with scratch_postgres_database() as database_url:
        shared = {
            "LAMINAR_DATABASE_URL": database_url,
            "LAMINAR_TEMPORAL_ADDRESS": temporal_address,
            "LAMINAR_ADMIN_API_KEY": E2E_ADMIN_KEY,
            "LAMINAR_HTTP_PORT": str(port),
            "LAMINAR_TASK_QUEUE": f"e2e-platform-{port}",
            **(env or {}),
        }
        upgraded = cli.run("db", "upgrade", env=shared)
        assert upgraded.code == 0, upgraded.details
        base = f"http://127.0.0.1:{port}"
        platform = Platform(cli, tmp_path, shared, base, {}, {})
        platform.start_server()
        for name in workers:
            platform.start_worker(name)
        platform.wait_ready()
        admin = {"LAMINAR_URL": base, "LAMINAR_API_KEY": E2E_ADMIN_KEY}
        assert cli.run("tenants", "create", "acme", env=admin).code == 0
        made = cli.run("keys", "create", "ops", "--tenant", "acme", "--scope", "operate", env=admin)
        assert made.code == 0, made.details
        platform.client_env.update(
            LAMINAR_URL=base, LAMINAR_API_KEY=made.stdout.strip().splitlines()[-1]
        )
        yield platform


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path)
    try:
        yield runner
    finally:
        runner.kill_all()
        # A killed laminar's server gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and needs
        # a moment to flush and exit; anything still there after that is a leak.
        deadline = time.monotonic() + 15
        while processes_under(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        leaked = processes_under(tmp_path)
        descriptions = []
        for proc in leaked:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                descriptions.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
                os.kill(proc.pid, signal.SIGKILL)
        if descriptions:
            pytest.fail("processes left running after the test:\n" + "\n".join(descriptions))
