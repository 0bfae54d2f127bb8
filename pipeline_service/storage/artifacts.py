"""The artifact store (`LAMINAR_ARTIFACT_URL`): where a run's step logs and hand-off tables
live when its steps land on different workers. Keys are made in activities/artifacts.py."""

from __future__ import annotations

from pathlib import Path

from pipeline_service.storage.store import ObjectNotFound, ObjectStorage


class ArtifactStorage:
    """ObjectStorage in the shape the step activity and the API use (blocking calls)."""

    def __init__(self, url: str, *, s3_endpoint: str | None = None) -> None:
        self.objects = ObjectStorage(url, s3_endpoint=s3_endpoint)

    def __repr__(self) -> str:
        return f"ArtifactStorage({self.objects!r})"

    def put(self, key: str, data: bytes | Path) -> object:
        return self.objects.put(key, data)

    def fetch(self, key: str, target: Path) -> bool:
        """Download `key` to `target`; False if there is no such object."""
        try:
            self.objects.download(key, target)
        except ObjectNotFound:
            target.unlink(missing_ok=True)
            return False
        return True

    def keys(self, prefix: str) -> set[str]:
        return {info.key for info in self.objects.list(prefix)}

    def tail(self, key: str, size: int) -> bytes | None:
        """The last `size` bytes of an object; None if there is no such object."""
        try:
            return self.objects.tail(key, size)
        except ObjectNotFound:
            return None
