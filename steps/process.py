"""Child processes that cannot outlive us: even a `kill -9` of Laminar takes them along."""

from __future__ import annotations

import shutil
import signal
import sys


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
