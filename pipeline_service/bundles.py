"""Code bundles: the files a pipeline version references (scripts, SQL files, Spark/Flink
applications), stored with the version as one immutable, content-hashed set, and
materialized on any process that needs them (a server validating, a worker running steps).

A bundle's digest is the SHA-256 over its sorted paths and their contents' SHA-256, so the
same files make the same bundle and a materialized directory never needs refreshing: it is
written under its digest, once, atomically (a temporary directory renamed into place)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import platformdirs
from sqlalchemy import select
from sqlalchemy.orm import Session

from activities.steps import BUNDLE_PREFIX as BUNDLE_PREFIX  # one definition for both sides
from pipeline_service.db.models import Bundle

MAX_FILES = 500
MAX_FILE_BYTES = 16 * 1024 * 1024


class BundleError(ValueError):
    """A bundle that cannot be stored or found; the message says which file and why."""


def default_cache() -> Path:
    return Path(platformdirs.user_cache_dir("laminar")) / "bundles"


def path_problem(path: str) -> str | None:
    """Why `path` cannot be a bundle file (absolute, escaping, hidden...), or None."""
    pure = PurePosixPath(path)
    if not path or "\\" in path or "\x00" in path:
        return "not a relative POSIX path"
    if pure.is_absolute():
        return "absolute paths are not allowed"
    if any(part in ("..", ".", "") for part in path.split("/")):
        return "'..', '.' and empty path parts are not allowed"
    if len(path) > 400:
        return "longer than 400 characters"
    return None


def decode_files(encoded: dict[str, str]) -> dict[str, bytes]:
    """Request files (path -> base64) as bytes, every problem reported at once."""
    problems, files = [], {}
    if len(encoded) > MAX_FILES:
        raise BundleError(f"files: {len(encoded)} files; at most {MAX_FILES}")
    for path, data in sorted(encoded.items()):
        if problem := path_problem(path):
            problems.append(f"files.{path}: {problem}")
            continue
        try:
            files[path] = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"files.{path}: not base64")
            continue
        if len(files[path]) > MAX_FILE_BYTES:
            problems.append(f"files.{path}: larger than {MAX_FILE_BYTES} bytes")
    if problems:
        raise BundleError("; ".join(problems))
    return files


def bundle_digest(files: dict[str, bytes]) -> str:
    outer = hashlib.sha256()
    for path in sorted(files):
        outer.update(path.encode() + b"\x00" + hashlib.sha256(files[path]).digest())
    return outer.hexdigest()


def materialize(cache: Path, digest: str, files: dict[str, bytes]) -> Path:
    """The bundle's directory under `cache` (written if missing; read-only files)."""
    target = cache / digest
    if target.is_dir():
        return target
    if bundle_digest(files) != digest:
        raise BundleError(f"bundle {digest}: its files do not match its digest")
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=cache))
    try:
        for path, content in files.items():
            file = staging / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(content)
            file.chmod(0o444 if not os.access(file, os.X_OK) else 0o555)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent materialization that won
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def store_bundle(session: Session, tenant_id: int, files: dict[str, bytes]) -> str:
    """Store the files once per tenant and digest; the digest."""
    digest = bundle_digest(files)
    existing = session.scalar(
        select(Bundle.id).where(Bundle.tenant_id == tenant_id, Bundle.digest == digest)
    )
    if existing is None:
        encoded = {path: base64.b64encode(data).decode() for path, data in files.items()}
        session.add(
            Bundle(
                tenant_id=tenant_id,
                digest=digest,
                files=encoded,
                size=sum(len(data) for data in files.values()),
            )
        )
        session.flush()
    return digest


def load_bundle(session: Session, tenant_id: int, digest: str) -> dict[str, bytes]:
    row = session.scalars(
        select(Bundle).where(Bundle.tenant_id == tenant_id, Bundle.digest == digest)
    ).one_or_none()
    if row is None:
        raise BundleError(f"bundle {digest} not found")
    return {path: base64.b64decode(data) for path, data in row.files.items()}


def bundle_dir(session: Session, tenant_id: int, digest: str, cache: Path) -> Path:
    """The bundle materialized under `cache` (read from the database if it is not there)."""
    target = cache / digest
    if target.is_dir():
        return target
    return materialize(cache, digest, load_bundle(session, tenant_id, digest))
