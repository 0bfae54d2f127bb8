"""Fails on its first two attempts, like an extract from a source that is briefly unavailable.

The attempt number comes from the run context Laminar passes in LAMINAR_CONTEXT; retries keep
the same idempotency key, which a real extract would use to avoid duplicate side effects.
"""

import json
import os
import sys
from pathlib import Path

context = json.loads(Path(os.environ["LAMINAR_CONTEXT"]).read_text())
attempt = context["attempt"]
if attempt < 3:
    print(f"attempt {attempt}: source unavailable, try again later", file=sys.stderr)
    sys.exit(1)
print(f"attempt {attempt}: extracted 100 rows (idempotency key {context['idempotency_key']})")
Path(os.environ["LAMINAR_RESULT"]).write_text(json.dumps({"rows": 100, "attempt": attempt}))
