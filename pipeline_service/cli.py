"""The `laminar` entry point. Only the standard library loads before the signal handlers are
set, so a Ctrl-C while the rest loads (typer, pydantic, the Temporal SDK: about a second)
exits 130 quietly instead of printing a KeyboardInterrupt traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from types import FrameType
from typing import NoReturn

EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _stop_quietly(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds like any exception, so `finally` blocks (the dev server's stop, the
    # state-dir lock) still run; it prints nothing.
    raise SystemExit(EXIT_INTERRUPTED.get(signal.Signals(signum), 128 + signum))


def main() -> None:
    for signum in EXIT_INTERRUPTED:
        signal.signal(signum, _stop_quietly)
    try:
        from pipeline_service.commands import main as run_commands

        run_commands()
    except KeyboardInterrupt:  # an event loop restored Python's default handler on closing
        _exit(130)
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


def _exit(code: str | int | None) -> NoReturn:
    """Exit with `code`, skipping interpreter teardown once the Temporal SDK is loaded.

    The SDK's Rust runtime keeps threads that may call into Python while CPython finalizes;
    that aborts the process now and then ("Fatal Python error: PyGILState_Release",
    temporalio/sdk-python#300) after the command's work is done. Every `finally` block and
    context manager has run by here; what teardown would still do (flush stdio, flush and
    close log handlers) is done explicitly."""
    if "temporalio" not in sys.modules:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message") prints the message and exits 1
        print(code, file=sys.stderr)
        status = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)
