"""Virtual environments for python steps with `requirements:`, built with uv and cached.

An environment is keyed by the hash of its requirements (normalized, sorted) and the Python
version, built once in a temporary directory and renamed into place, so a half-built one is
never used; a file lock makes two steps that need the same environment at once build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

from steps.base import StepError

READY = ".laminar-ready"
_MAX_LOG = 4000


def default_environments() -> Path:
    """`<user cache dir>/laminar/environments` (override: LAMINAR_PYTHON_ENVIRONMENTS)."""
    configured = os.environ.get("LAMINAR_PYTHON_ENVIRONMENTS")
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("laminar")) / "environments"


def environment_key(requirements: list[str]) -> str:
    normalized = sorted(str(Requirement(r)) for r in requirements)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    text = "\n".join([f"python {version}", *normalized])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def python_of(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def ensure_environment(requirements: list[str], cache_root: Path) -> Path:
    """The interpreter of the environment for `requirements`, built now if not cached."""
    cache_root.mkdir(parents=True, exist_ok=True)
    key = environment_key(requirements)
    env_dir = cache_root / key
    if (env_dir / READY).exists():
        return python_of(env_dir)
    with (cache_root / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here, then finds it ready
        if not (env_dir / READY).exists():
            _build(requirements, env_dir)
    return python_of(env_dir)


def _build(requirements: list[str], env_dir: Path) -> None:
    from uv import find_uv_bin

    uv = find_uv_bin()
    building = env_dir.with_name(f"{env_dir.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(env_dir, ignore_errors=True)  # a crashed build left an unready one
    try:
        # Relocatable: it is built under a temporary name and renamed into place.
        _uv(uv, "venv", "--quiet", "--relocatable", "--python", sys.executable, str(building))
        _uv(
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python_of(building)),
            *requirements,
        )
        (building / READY).write_text("\n".join(requirements) + "\n")
        building.rename(env_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _uv(uv: str, *args: str) -> None:
    result = subprocess.run(
        [uv, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-_MAX_LOG:]
        raise StepError(
            f"building the step's environment failed (uv {args[0]}): {output}",
            error_type="EnvironmentBuildFailed",
            retryable=True,  # often the network; a bad pin fails again, within the retry policy
        )
