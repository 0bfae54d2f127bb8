"""One object-store client for every backend: S3 (and S3-compatible stores), GCS, Azure Blob,
local files. obstore does the protocols and the credential chains; this module names places
by URL and turns the library's errors into messages that say what to fix.

Credentials come only from each cloud's standard chain (environment, web identity / IRSA,
ECS/Fargate task role, instance metadata, GOOGLE_APPLICATION_CREDENTIALS, Azure managed
identity...): there is deliberately no option to pass a key on the command line, where it
would end up in shell history and process listings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import obstore
from obstore import exceptions as obs_errors
from obstore.store import LocalStore, MemoryStore, from_url

REMOTE_SCHEMES = {"s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "memory", "file"}
"""Schemes `--state-dir` accepts besides a plain path (memory:// is for tests only)."""

_RETRIES = {"max_retries": 4, "retry_timeout": timedelta(seconds=30)}
"""obstore retries 5xx and connection errors for up to 3 minutes by default: a mistyped
endpoint would hang `laminar run` that long before saying anything."""


class StorageError(Exception):
    """An object-store operation failed; the message says which operation, where and why."""


class ObjectNotFound(StorageError):
    pass


class PreconditionFailed(StorageError):
    """A conditional write lost a race (the object changed, or already exists)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    """Relative to the store's prefix."""
    size: int
    last_modified: datetime
    e_tag: str | None


def is_url(location: str) -> bool:
    """A `scheme://...` location (as opposed to a plain local path)."""
    return urlparse(location).scheme.lower() in REMOTE_SCHEMES and "://" in location


def describe(url: str) -> str:
    """The URL as shown to users (no query string, which may carry SAS tokens)."""
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}" if parsed.scheme else url


class ObjectStorage:
    """Objects under one URL prefix: put, get, list, delete, and conditional writes."""

    _memory: dict[str, MemoryStore] = {}

    def __init__(self, url: str, *, s3_endpoint: str | None = None) -> None:
        self.url = url
        self._store = _open(url, s3_endpoint)
        # LocalFileSystem has no compare-and-swap on an existing object (create-only works).
        self.supports_update = not isinstance(self._store, LocalStore)

    def __repr__(self) -> str:
        return f"ObjectStorage({describe(self.url)!r})"

    def put(
        self,
        key: str,
        data: bytes | Path,
        *,
        create_only: bool = False,
        if_match: str | None = None,
    ) -> str | None:
        """Write an object atomically (readers see the old or the new one); its e-tag."""
        mode: Any = "create" if create_only else ({"e_tag": if_match} if if_match else None)
        result = self._call("write", key, obstore.put, self._store, key, data, mode=mode)
        return result.get("e_tag") if isinstance(result, dict) else None

    def get(self, key: str) -> tuple[bytes, str | None]:
        """An object's bytes and e-tag; ObjectNotFound if it is not there."""
        result = self._call("read", key, obstore.get, self._store, key)
        return bytes(result.bytes()), result.meta.get("e_tag")

    def tail(self, key: str, size: int) -> bytes:
        """The last `size` bytes of an object (all of it if smaller); ObjectNotFound."""
        options: Any = {"range": {"suffix": size}}
        result = self._call("read", key, obstore.get, self._store, key, options=options)
        return bytes(result.bytes())

    def exists(self, key: str) -> bool:
        """Whether the object is there (a HEAD request; StorageError if the store says no)."""
        try:
            self._call("read", key, obstore.head, self._store, key)
        except ObjectNotFound:
            return False
        return True

    def download(self, key: str, target: Path) -> int:
        """Stream an object to a local file; its size."""
        result = self._call("read", key, obstore.get, self._store, key)
        size = 0
        with target.open("wb") as out:
            for chunk in result:
                out.write(chunk)
                size += len(chunk)
        return size

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        def collect() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            for batch in obstore.list(self._store, prefix=prefix or None):
                found.extend(_info(meta) for meta in batch)
            return found

        return list(self._call("list", prefix or "/", collect))

    def delete(self, keys: str | Iterable[str]) -> None:
        names = [keys] if isinstance(keys, str) else list(keys)
        if names:
            self._call("delete", names[0], obstore.delete, self._store, names)

    def _call(self, operation: str, key: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except FileNotFoundError as exc:  # LocalStore's not-found is the builtin
            raise ObjectNotFound(self._where(operation, key, "not found")) from exc
        except obs_errors.NotFoundError as exc:
            raise ObjectNotFound(self._where(operation, key, "not found")) from exc
        except (obs_errors.AlreadyExistsError, obs_errors.PreconditionError) as exc:
            raise PreconditionFailed(self._where(operation, key, "changed meanwhile")) from exc
        except obs_errors.PermissionDeniedError as exc:
            raise StorageError(
                self._where(
                    operation,
                    key,
                    f"permission denied: the credentials in use may not {operation} objects here",
                )
            ) from exc
        except obs_errors.UnauthenticatedError as exc:
            raise StorageError(
                self._where(
                    operation,
                    key,
                    "not authenticated: no valid credentials were found "
                    "in the provider chain (environment, web identity, task role, "
                    "instance metadata)",
                )
            ) from exc
        except (obs_errors.BaseError, OSError) as exc:
            raise StorageError(self._where(operation, key, _first_line(exc))) from exc

    def _where(self, operation: str, key: str, why: str) -> str:
        return f"cannot {operation} {describe(self.url).rstrip('/')}/{key.lstrip('/')}: {why}"


def _open(url: str, s3_endpoint: str | None) -> Any:
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    try:
        if not is_url(url):
            path = Path(url).expanduser().resolve()
            path.mkdir(parents=True, exist_ok=True)
            return LocalStore(path)
        if scheme == "file":
            path = Path(parsed.path)
            path.mkdir(parents=True, exist_ok=True)
            return LocalStore(path)
        if scheme == "memory":  # tests: one store per name within the process
            return ObjectStorage._memory.setdefault(parsed.netloc, MemoryStore())
        options: dict[str, Any] = {}
        config: dict[str, Any] = {}
        if scheme in ("s3", "s3a"):
            # Conditional PUT (If-Match) is what the lease's compare-and-swap relies on.
            config["conditional_put"] = "etag"
            if s3_endpoint:
                config["endpoint"] = s3_endpoint
                options["allow_http"] = s3_endpoint.startswith("http://")
            url = "s3://" + url.split("://", 1)[1]
        open_url: Any = from_url  # its overloads are per scheme; ours is known only at run time
        return open_url(
            url,
            config=config or None,
            client_options=options or None,
            retry_config=_RETRIES,
        )
    except OSError as exc:
        raise StorageError(f"cannot use {describe(url)}: {exc.strerror or exc}") from exc
    except (obs_errors.BaseError, ValueError) as exc:
        raise StorageError(f"cannot use {describe(url)}: {_first_line(exc)}") from exc
    except BaseException as exc:  # obstore panics (pyo3) on some malformed URLs
        if type(exc).__name__ == "PanicException":
            raise StorageError(f"cannot use {describe(url)}: {exc}") from None
        raise


def _info(meta: Any) -> ObjectInfo:
    return ObjectInfo(
        key=str(meta["path"]),
        size=int(meta["size"]),
        last_modified=meta["last_modified"],
        e_tag=meta.get("e_tag"),
    )


def _first_line(exc: BaseException) -> str:
    """obstore errors carry a multi-line debug dump; the first line says what happened."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
