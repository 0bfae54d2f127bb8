"""Waits for the seconds given as its argument: a step that holds its slot for a while (used by
the quota and pool examples)."""

import sys
import time

time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)
print("paused")
