"""Uses the TOKEN its step takes from a tenant secret (`env: {TOKEN: {secret: ...}}`): reports
its SHA-256, never the value. Printing the value is masked in the step's log; with the
argument `fail` it fails with the token in its last line, which is masked the same way."""

import hashlib
import json
import os
import sys
from pathlib import Path

token = os.environ["TOKEN"]
print(f"using token {token}")
if sys.argv[1:] == ["fail"]:
    sys.exit(f"the warehouse refused token {token}")
digest = hashlib.sha256(token.encode()).hexdigest()
Path(os.environ["LAMINAR_RESULT"]).write_text(json.dumps({"token_sha256": digest}))
