"""A lost lease against moto's S3 server (the stand-in for S3): taken over by another cluster,
or not renewable for 2/3 of its ttl (the store unreachable), the holder learns it at once,
publishes no more checkpoints, and never switches the manifest to a snapshot it uploaded
before it learnt it."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from pipeline_service.cluster_remote import RemoteOptions, RemoteState
from pipeline_service.storage.lease import LEASE
from pipeline_service.storage.snapshot import copy_warehouse_file
from tests.s3_standin import S3StandIn, s3_standin


def take_over(s3: S3StandIn, bucket: str, prefix: str) -> None:
    """What another cluster does once our lease lapsed: write the lease object as its own."""
    lease = {
        "holder": "other-host:1:feedbeef",
        "expires_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
        "ttl_seconds": 30,
    }
    s3.client().put_object(Bucket=bucket, Key=f"{prefix}/{LEASE}", Body=json.dumps(lease))


def local_state(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "laminar-state.json").write_text('{"pipeline": "p"}')
    duckdb.connect(str(root / "warehouse.duckdb")).execute("CREATE TABLE t AS SELECT 1").close()
    return root


def remote_for(s3: S3StandIn, url: str, local: Path, ttl: float) -> RemoteState:
    options = RemoteOptions(url=url, s3_endpoint=s3.endpoint, lease_ttl=timedelta(seconds=ttl))
    return RemoteState(options, local, "p")


def test_a_takeover_is_noticed_and_no_checkpoint_follows(tmp_path: Path, s3: S3StandIn) -> None:
    bucket = s3.new_bucket()
    local = local_state(tmp_path / "local")
    remote = remote_for(s3, f"s3://{bucket}/st", local, ttl=1.5)
    lost: list[str] = []
    remote.on_lease_lost = lost.append
    remote.acquire()
    try:
        copier = copy_warehouse_file(local / "warehouse.duckdb")
        first = remote.checkpoint(copier, "r", [])
        assert first is not None
        take_over(s3, bucket, "st")
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lost and "taken by other-host:1:feedbeef" in lost[0], lost
        assert remote.checkpoint(copier, "r", ["a"]) is None
        assert remote.store.manifest().latest.id == first.id  # type: ignore[union-attr]
    finally:
        remote.release()
    # Released by a cluster that lost it: the new holder's lease object stays.
    body = s3.client().get_object(Bucket=bucket, Key=f"st/{LEASE}")["Body"].read()
    assert json.loads(body)["holder"] == "other-host:1:feedbeef"
    assert len(lost) == 1


def test_a_snapshot_uploaded_while_the_lease_was_taken_is_not_switched_to(
    tmp_path: Path, s3: S3StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The takeover happens during the upload, before the renewer's next look: the check
    right before the manifest switch catches it."""
    bucket = s3.new_bucket()
    local = local_state(tmp_path / "local")
    remote = remote_for(s3, f"s3://{bucket}/st", local, ttl=60)  # renewer: every 20 s
    lost: list[str] = []
    remote.on_lease_lost = lost.append
    remote.acquire()
    try:
        copier = copy_warehouse_file(local / "warehouse.duckdb")
        first = remote.checkpoint(copier, "r", [])
        assert first is not None
        storage = remote.store.storage
        real_put = storage.put

        def put_then_lose(key: str, data: bytes | Path, **kwargs: object) -> str | None:
            result = real_put(key, data, **kwargs)  # type: ignore[arg-type]
            if key.startswith("checkpoints/"):
                take_over(s3, bucket, "st")
            return result

        monkeypatch.setattr(storage, "put", put_then_lose)
        assert remote.checkpoint(copier, "r", ["a"]) is None
        assert lost and "taken by other-host" in lost[0]
        manifest = remote.store.manifest()
        assert manifest is not None and [c.id for c in manifest.checkpoints] == [first.id]
        assert len(s3.keys(bucket, "st/checkpoints/")) == 2  # an orphan, pruned later
    finally:
        remote.release()


def test_a_store_out_of_reach_for_two_thirds_of_the_ttl_counts_as_lost(tmp_path: Path) -> None:
    """The holder cannot see a takeover it cannot read: it gives up before its lease lapses.
    A moto server of its own, stopped mid-lease, is the unreachable store."""
    local = local_state(tmp_path / "local")
    with s3_standin() as own:
        bucket = own.new_bucket()
        remote = remote_for(own, f"s3://{bucket}/st", local, ttl=3)
        lost = threading.Event()
        why: list[str] = []
        remote.on_lease_lost = lambda reason: (why.append(reason), lost.set())
        remote.acquire()
    # The server is stopped here; renewals fail from now on.
    try:
        assert lost.wait(60), "the lease was never given up"
        assert "not renewed for" in why[0] and "of its 3s ttl" in why[0], why
        assert remote.lease_lost is not None
    finally:
        remote.release()
