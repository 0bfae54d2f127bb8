"""Client-side encryption of snapshots (LAMINAR_CHECKPOINT_KEY) against moto's S3 server, the
stand-in for S3: what lands in the bucket is not the plaintext, a restore with the key gives
the state back, no key / another key / altered bytes are refused with a clear message."""

from __future__ import annotations

import base64
import gzip
import os
import sqlite3
from pathlib import Path

import duckdb
import pytest

from pipeline_service.settings import RunSettings
from pipeline_service.storage.checkpoints import CheckpointStore
from pipeline_service.storage.encryption import (
    CHUNK,
    MAGIC,
    SnapshotCipher,
    SnapshotDecryptError,
    SnapshotKeyError,
    parse_key,
)
from pipeline_service.storage.snapshot import copy_warehouse_file, restore_snapshot, take_snapshot
from pipeline_service.storage.store import ObjectStorage
from tests.s3_standin import S3StandIn

MARKER = "plaintext-marker-7f3a9c"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _state(root: Path) -> Path:
    """A state dir whose databases and work files carry MARKER, with 3 MiB of random bytes in
    a step's output (incompressible: several cipher chunks)."""
    root.mkdir(parents=True)
    (root / "laminar-state.json").write_text('{"pipeline": "p"}')
    (root / "work" / "step").mkdir(parents=True)
    (root / "work" / "step" / "out.csv").write_text(f"a\n{MARKER}\n")
    (root / "work" / "step" / "blob.bin").write_bytes(os.urandom(3 * CHUNK))
    history = sqlite3.connect(root / "temporal.db")
    history.execute("CREATE TABLE history (event TEXT)")
    history.execute("INSERT INTO history VALUES (?)", (MARKER,))
    history.commit()
    history.close()
    warehouse = duckdb.connect(str(root / "warehouse.duckdb"))
    warehouse.execute(f"CREATE TABLE out AS SELECT '{MARKER}' AS marker")
    warehouse.close()
    return root


@pytest.fixture
def state_url(s3: S3StandIn) -> tuple[S3StandIn, str, str]:
    bucket = s3.new_bucket()
    return s3, bucket, f"s3://{bucket}/enc"


def _publish(tmp_path: Path, url: str, s3: S3StandIn, cipher: SnapshotCipher | None) -> None:
    state = _state(tmp_path / "state")
    snapshot = take_snapshot(state, copy_warehouse_file(state / "warehouse.duckdb"))
    try:
        assert snapshot.size > 2 * CHUNK  # several chunks through the streaming cipher
        store = CheckpointStore(ObjectStorage(url, s3_endpoint=s3.endpoint), cipher=cipher)
        store.publish(snapshot.path, "p", run_id="r1", finished_steps=["step"])
    finally:
        snapshot.cleanup()


def test_the_bucket_holds_ciphertext_and_the_key_restores_it(
    tmp_path: Path, state_url: tuple[S3StandIn, str, str]
) -> None:
    s3, bucket, url = state_url
    cipher = SnapshotCipher.from_setting(new_key())
    _publish(tmp_path, url, s3, cipher)

    [key] = [k for k in s3.keys(bucket, "enc/checkpoints/")]
    assert key.endswith(".tar.gz.enc")
    stored = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert stored.startswith(MAGIC)
    assert not stored[len(MAGIC) + 12 :].startswith(b"\x1f\x8b")  # no gzip stream inside
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(stored)
    assert MARKER.encode() not in stored and cipher.key not in stored

    store = CheckpointStore(ObjectStorage(url, s3_endpoint=s3.endpoint), cipher=cipher)
    manifest = store.manifest()
    assert manifest is not None and manifest.latest is not None
    assert manifest.latest.encryption == "AES-256-GCM"
    assert manifest.latest.key_id == cipher.key_id
    assert manifest.latest.size == len(stored)

    archive = tmp_path / "download.tar.gz"
    store.fetch(manifest.latest, archive)
    assert archive.read_bytes()[:2] == b"\x1f\x8b"
    restored = tmp_path / "restored"
    restore_snapshot(archive, restored)
    history = sqlite3.connect(restored / "temporal.db").execute("SELECT event FROM history")
    assert history.fetchall() == [(MARKER,)]
    warehouse = duckdb.connect(str(restored / "warehouse.duckdb"), read_only=True)
    assert warehouse.execute("SELECT marker FROM out").fetchall() == [(MARKER,)]
    assert (restored / "work" / "step" / "out.csv").read_text() == f"a\n{MARKER}\n"
    blob = (tmp_path / "state" / "work" / "step" / "blob.bin").read_bytes()
    assert (restored / "work" / "step" / "blob.bin").read_bytes() == blob


def test_restore_without_the_key_or_with_another_is_refused_before_downloading(
    tmp_path: Path, state_url: tuple[S3StandIn, str, str]
) -> None:
    s3, _bucket, url = state_url
    cipher = SnapshotCipher.from_setting(new_key())
    _publish(tmp_path, url, s3, cipher)
    target = tmp_path / "download.tar.gz"

    keyless = CheckpointStore(ObjectStorage(url, s3_endpoint=s3.endpoint))
    latest = keyless.manifest().latest  # type: ignore[union-attr]
    assert latest is not None
    with pytest.raises(SnapshotDecryptError) as no_key:
        keyless.fetch(latest, target)
    assert "set LAMINAR_CHECKPOINT_KEY to the key it was written with" in str(no_key.value)
    assert cipher.key_id in str(no_key.value)

    other = SnapshotCipher.from_setting(new_key())
    wrong = CheckpointStore(ObjectStorage(url, s3_endpoint=s3.endpoint), cipher=other)
    with pytest.raises(SnapshotDecryptError) as wrong_key:
        wrong.fetch(latest, target)
    message = str(wrong_key.value)
    assert f"key id {cipher.key_id}, but LAMINAR_CHECKPOINT_KEY is key id {other.key_id}" in (
        message
    )
    assert not target.exists() and not list(tmp_path.glob("download*"))


def test_a_wrong_key_or_altered_bytes_fail_authentication(
    tmp_path: Path, state_url: tuple[S3StandIn, str, str]
) -> None:
    """Without the manifest's key id to go by (or with the object altered), GCM's tag is what
    refuses: nothing half-decrypted is left behind."""
    s3, bucket, url = state_url
    cipher = SnapshotCipher.from_setting(new_key())
    _publish(tmp_path, url, s3, cipher)
    target = tmp_path / "download.tar.gz"

    store = CheckpointStore(
        ObjectStorage(url, s3_endpoint=s3.endpoint),
        cipher=SnapshotCipher.from_setting(new_key()),
    )
    latest = store.manifest().latest  # type: ignore[union-attr]
    assert latest is not None
    latest.key_id = None
    with pytest.raises(SnapshotDecryptError, match="the key is wrong or the object was altered"):
        store.fetch(latest, target)
    assert not target.exists()

    [key] = s3.keys(bucket, "enc/checkpoints/")
    body = bytearray(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.client().put_object(Bucket=bucket, Key=key, Body=bytes(body))
    store.cipher = cipher
    with pytest.raises(SnapshotDecryptError, match="the key is wrong or the object was altered"):
        store.fetch(store.manifest().latest, target)  # type: ignore[union-attr,arg-type]
    assert not target.exists()


def test_keys_are_checked_and_never_echoed() -> None:
    good = new_key()
    assert len(parse_key(good)) == 32
    assert parse_key(base64.urlsafe_b64encode(base64.b64decode(good)).decode().rstrip("=")) == (
        base64.b64decode(good)
    )
    short = base64.b64encode(b"too short").decode()
    for bad, why in ((short, "decodes to 9 bytes"), ("not base64!!", "not base64")):
        with pytest.raises(SnapshotKeyError) as refused:
            parse_key(bad)
        assert why in str(refused.value) and bad not in str(refused.value)
    with pytest.raises(ValueError) as invalid:
        RunSettings(checkpoint_key=short)  # type: ignore[arg-type]
    assert "decodes to 9 bytes" in str(invalid.value)
    cipher = SnapshotCipher.from_setting(good)
    assert good not in repr(cipher) and "key=" not in repr(cipher)
    settings = RunSettings(checkpoint_key=good)  # type: ignore[arg-type]
    assert good not in repr(settings) and good not in str(settings.model_dump())
