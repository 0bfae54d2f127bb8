"""A lease object with an expiry: one cluster at a time on a remote state dir.

A file lock cannot span machines. The lease is a small JSON object written with the store's
conditional writes (create-if-absent, replace-if-unchanged by e-tag), renewed well before it
expires. A container that is restarted while its predecessor still holds a live lease is
refused until the lease expires, instead of racing it; a predecessor killed with kill -9
stops renewing, so its lease lapses after `ttl`.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipeline_service.storage.store import (
    ObjectNotFound,
    ObjectStorage,
    PreconditionFailed,
    describe,
)

LEASE = "lease.json"


class LeaseHeld(Exception):
    """Another cluster holds a live lease on this state."""


class LeaseLost(Exception):
    """Our lease was taken over (it expired while we could not renew it)."""


@dataclass
class Lease:
    storage: ObjectStorage
    ttl: timedelta = timedelta(seconds=30)
    holder: str = ""
    _e_tag: str | None = None

    def __post_init__(self) -> None:
        self.holder = self.holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def acquire(self) -> None:
        """Take the lease, or raise LeaseHeld naming the holder and when its lease expires."""
        try:
            data, e_tag = self.storage.get(LEASE)
        except ObjectNotFound:
            self._write(create=True)
            return
        holder, expires = _parse(data)
        if holder not in (None, self.holder) and expires and _now() < expires:
            seconds = (expires - _now()).total_seconds()
            raise LeaseHeld(
                f"state {describe(self.storage.url)} is in use by another laminar run "
                f"({holder}), whose lease expires in {seconds:.0f}s "
                f"(at {expires.isoformat(timespec='seconds')}). If that run is gone, start "
                "again after that."
            )
        self._replace(e_tag)

    def renew(self) -> None:
        try:
            data, e_tag = self.storage.get(LEASE)
        except ObjectNotFound:
            raise LeaseLost("the lease object was deleted") from None
        holder, _ = _parse(data)
        if holder != self.holder:
            raise LeaseLost(f"the lease was taken by {holder}")
        self._replace(e_tag)

    def check(self) -> None:
        """LeaseLost unless the lease object still names us (a read, no write)."""
        try:
            data, _ = self.storage.get(LEASE)
        except ObjectNotFound:
            raise LeaseLost("the lease object was deleted") from None
        holder, _ = _parse(data)
        if holder != self.holder:
            raise LeaseLost(f"the lease was taken by {holder}")

    def release(self) -> None:
        try:
            data, _ = self.storage.get(LEASE)
        except ObjectNotFound:
            return
        if _parse(data)[0] == self.holder:
            self.storage.delete(LEASE)

    def _replace(self, e_tag: str | None) -> None:
        if self.storage.supports_update:
            try:
                self._write(if_match=e_tag)
            except PreconditionFailed:
                raise LeaseHeld(
                    f"state {describe(self.storage.url)}: another laminar run took the lease "
                    "at the same moment"
                ) from None
        else:
            # Local files have create-if-absent but no compare-and-swap: delete + create, so of
            # two racing clusters only one create succeeds.
            self.storage.delete(LEASE)
            try:
                self._write(create=True)
            except PreconditionFailed:
                raise LeaseHeld(
                    f"state {describe(self.storage.url)}: another laminar run took the lease "
                    "at the same moment"
                ) from None

    def _write(self, *, create: bool = False, if_match: str | None = None) -> None:
        document = {
            "holder": self.holder,
            "expires_at": (_now() + self.ttl).isoformat(),
            "ttl_seconds": self.ttl.total_seconds(),
        }
        self._e_tag = self.storage.put(
            LEASE, json.dumps(document).encode(), create_only=create, if_match=if_match
        )


def _parse(data: bytes) -> tuple[str | None, datetime | None]:
    """(holder, expiry) of a lease object; an unreadable one counts as expired."""
    try:
        document = json.loads(data)
        return str(document["holder"]), datetime.fromisoformat(document["expires_at"])
    except (ValueError, KeyError, TypeError):
        return None, None


def _now() -> datetime:
    return datetime.now(UTC)
