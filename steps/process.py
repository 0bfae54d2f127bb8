"""External processes of steps (scripts, spark-submit, Flink CLIs) and their process groups.

A job's driver is started as the leader of its own process group (`spawn_group`), so stopping
the group stops everything it spawned (the JVM, the Python worker of a PySpark driver), and it
cannot outlive Laminar: even a `kill -9` of the worker takes it along. Drivers carry a tag in
their command line (`steps.base.step_tag`), so that an attempt can find the ones an earlier
attempt left behind when its worker died.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import IO, Any


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> list[str]:
    """An argv prefix asking Linux to send `sig` to the command when its parent dies.

    Without it, a crashed `laminar run` would leave its script or Temporal server running,
    and the resumed run would start a second copy beside it. It uses `setpriv` (util-linux,
    on every Debian system) rather than a `preexec_fn`, which is unsafe in a process with
    threads (the Temporal worker and DuckDB have many). Empty where unavailable.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return []
    return [setpriv, "--pdeathsig", sig.name.removeprefix("SIG"), "--"]


async def spawn_group(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    stdout: IO[Any] | int,
) -> asyncio.subprocess.Process:
    """Start `argv` as the leader of a new process group that dies with us; output to
    `stdout` (a file, or `asyncio.subprocess.PIPE`), stderr with it, no stdin."""
    return await asyncio.create_subprocess_exec(
        *die_with_parent(),  # setpriv execs the command: same pid, same process group
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group: the whole tree can be signalled
    )


_PROC = Path("/proc")


def signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(group, signum)


def _stat_fields(pid: str) -> list[bytes] | None:
    try:
        stat = (_PROC / pid / "stat").read_bytes()
    except OSError:
        return None  # exited meanwhile
    # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
    return stat[stat.rindex(b")") + 2 :].split()


def group_alive(group: int) -> bool:
    """Whether any process of the group can still act (zombies awaiting their reaper do not)."""
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not _PROC.is_dir():
        return True
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields and len(fields) > 2 and int(fields[2]) == group and fields[0] != b"Z":
                return True
    return False


def tagged_groups(tag: str) -> set[int]:
    """Process groups with a live member whose command line contains `tag`."""
    needle = tag.encode()
    groups: set[int] = set()
    if not _PROC.is_dir():
        return groups
    own = os.getpgrp()
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle not in cmdline:
            continue
        fields = _stat_fields(entry.name)
        if fields and len(fields) > 2 and fields[0] != b"Z":
            group = int(fields[2])
            if group != own:  # never our own group (a test runner may carry the tag)
                groups.add(group)
    return groups


async def terminate_group(group: int, grace: float) -> None:
    """SIGTERM the group, give it `grace` seconds, then SIGKILL whatever is left."""
    loop = asyncio.get_running_loop()
    try:
        signal_group(group, signal.SIGTERM)
        deadline = loop.time() + grace
        while group_alive(group) and loop.time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        # Also runs when a second cancellation interrupts the grace period.
        signal_group(group, signal.SIGKILL)
    while group_alive(group) and loop.time() < deadline + 5:
        await asyncio.sleep(0.05)
