"""Waits the number of seconds given as its argument: a stand-in for a slow job (used by the
schedule overlap tests)."""

import sys
import time

time.sleep(float(sys.argv[1]))
print(f"waited {sys.argv[1]} s")
