"""A local standalone Flink session cluster (one JobManager, one TaskManager) for the embedded
shape and the tests, from the Flink distribution inside the `apache-flink` packages.

Those packages pin Python dependencies that conflict with Laminar's, so `make flink` installs
them with `--no-deps` into a tool directory: only the jars and `pyflink/bin` scripts are used,
plus the `pyflink` Table API for Laminar's SQL driver. Both JVMs run in the foreground as our
children (own process groups, killed with us), never as daemons that could outlive a run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from steps.process import die_with_parent, signal_group

DEFAULT_TOOL_DIR = Path(__file__).resolve().parent.parent / ".tools" / "flink"
"""Where `make flink` installs the Flink distribution (override: LAMINAR_FLINK__TOOL_DIR)."""


class FlinkNotInstalled(RuntimeError):
    """The tool directory holds no Flink distribution."""


def flink_home(tool_dir: Path) -> Path:
    home = tool_dir / "pyflink"
    if not (home / "bin" / "jobmanager.sh").is_file():
        raise FlinkNotInstalled(
            f"Flink is not installed in {tool_dir}: run `make flink` (it installs apache-flink "
            "and apache-flink-libraries there with pip --no-deps)"
        )
    return home


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flink_config(home: Path, overrides: dict[str, Any]) -> str:
    """The distribution's config.yaml (it carries the JVM --add-opens Flink needs on Java 17)
    with `overrides` (flat keys, `rest.port`) set on top."""
    base = yaml.safe_load((home / "conf" / "config.yaml").read_text()) or {}
    flat = _flatten(base)
    flat.update({key: value for key, value in overrides.items() if value is not None})
    return yaml.safe_dump(flat, sort_keys=True)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _cluster_overrides(rest_port: int, rpc_port: int, slots: int, work: Path) -> dict[str, Any]:
    # Small memory footprint: the machine is shared with Spark jobs, Temporal and the tests.
    return {
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.rpc.port": rpc_port,
        "jobmanager.memory.process.size": "1024m",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "taskmanager.numberOfTaskSlots": slots,
        "taskmanager.memory.process.size": "1280m",
        "parallelism.default": 1,
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.port": rest_port,
        "blob.server.port": "0",
        "io.tmp.dirs": str(work / "tmp"),
        "web.upload.dir": str(work / "uploads"),
        "web.submit.enable": True,
        "web.cancel.enable": True,
    }


class LocalFlinkCluster:
    """Start with `start()`, stop with `stop()`; `rest_url` is the JobManager's REST address."""

    def __init__(self, tool_dir: Path, work_dir: Path, *, slots: int = 2) -> None:
        self.home = flink_home(tool_dir)
        self.work_dir = work_dir
        self.slots = slots
        self.rest_port = free_port()
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"
        self._processes: list[subprocess.Popen[bytes]] = []

    def environment(self) -> dict[str, str]:
        conf_dir = self.work_dir / "conf"
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "JAVA_HOME")}
        env.update(
            FLINK_CONF_DIR=str(conf_dir),
            FLINK_LOG_DIR=str(self.work_dir / "log"),
            FLINK_PID_DIR=str(self.work_dir / "pid"),
            HOME=str(self.work_dir),
        )
        return env

    def start(self, timeout: float = 120.0) -> None:
        conf_dir = self.work_dir / "conf"
        conf_dir.mkdir(parents=True, exist_ok=True)
        for name in ("log4j-console.properties", "logback-console.xml"):
            shutil.copy(self.home / "conf" / name, conf_dir / name)
        for sub in ("tmp", "uploads", "log", "pid"):
            (self.work_dir / sub).mkdir(exist_ok=True)
        overrides = _cluster_overrides(self.rest_port, free_port(), self.slots, self.work_dir)
        (conf_dir / "config.yaml").write_text(flink_config(self.home, overrides))
        env = self.environment()
        for script in ("jobmanager.sh", "taskmanager.sh"):
            log = (self.work_dir / "log" / f"{script}.out").open("ab")
            self._processes.append(
                subprocess.Popen(
                    [*die_with_parent(), str(self.home / "bin" / script), "start-foreground"],
                    env=env,
                    cwd=self.work_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"Flink process exited with {process.returncode}; logs in "
                        f"{self.work_dir / 'log'}"
                    )
            try:
                overview = httpx.get(f"{self.rest_url}/overview", timeout=2).json()
                if overview.get("taskmanagers", 0) >= 1:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Flink cluster not ready after {timeout:.0f}s ({self.work_dir})")

    def stop(self) -> None:
        """Stop both JVMs: SIGTERM their groups, SIGKILL what is left after a few seconds."""
        for process in self._processes:
            signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self._processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(process.pid, signal.SIGKILL)
                process.wait(5)
        self._processes.clear()
