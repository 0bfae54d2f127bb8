"""Waits for the seconds given as its first argument: a step that holds its slot for a while (used
by the quota and pool examples). With a second argument, a file path, it first waits until that
file exists (a gate a test opens). Reports when it ran (epoch seconds) as its result."""

import json
import os
import sys
import time
from pathlib import Path

started = time.time()
if len(sys.argv) > 2:
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
print("paused")
if "LAMINAR_RESULT" in os.environ:
    result = {"started": started, "ended": time.time()}
    Path(os.environ["LAMINAR_RESULT"]).write_text(json.dumps(result))
