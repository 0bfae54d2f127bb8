"""Client-side encryption of snapshots: AES-256-GCM (`cryptography`), streamed.

The key comes from `LAMINAR_CHECKPOINT_KEY`: 32 random bytes in base64 (`openssl rand -base64
32`). A snapshot is encrypted with GCM's incremental encryptor, 1 MiB at a time, so a large
warehouse never has to fit in memory; the object is

    MAGIC (16 bytes) | nonce (12 random bytes) | ciphertext | tag (16 bytes)

with MAGIC and the nonce authenticated as associated data. Decryption streams the same way
into a file that is used only once the tag has verified (GCM says nothing about the plaintext
until then). The manifest records the algorithm and a key id (an HMAC of a fixed label under
the key: it names the key without revealing it), so a restore without the key, or with
another one, is refused before anything is downloaded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pipeline_service.storage.store import StorageError

ALGORITHM = "AES-256-GCM"
MAGIC = b"LAMINAR-AESGCM1\n"
NONCE_BYTES = 12
TAG_BYTES = 16
CHUNK = 1 << 20
MAX_PLAINTEXT = (1 << 36) - 32
"""GCM's limit for one (key, nonce): 2^39 - 256 bits, about 64 GiB."""
KEY_SETTING = "LAMINAR_CHECKPOINT_KEY"


class SnapshotKeyError(ValueError):
    """The key setting is not 32 bytes of base64 (the message never shows the value)."""


class SnapshotDecryptError(StorageError):
    """An encrypted snapshot cannot be opened: no key, another key, or altered bytes."""


def parse_key(text: str) -> bytes:
    """32 bytes from standard or URL-safe base64 (SnapshotKeyError otherwise)."""
    stripped = text.strip().replace("-", "+").replace("_", "/")  # URL-safe alphabet too
    stripped += "=" * (-len(stripped) % 4)
    try:
        key = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise SnapshotKeyError(
            "must be 32 random bytes in base64 (e.g. `openssl rand -base64 32`); "
            "the value is not base64"
        ) from None
    if len(key) != 32:
        raise SnapshotKeyError(
            "must be 32 random bytes in base64 (e.g. `openssl rand -base64 32`); "
            f"it decodes to {len(key)} bytes"
        )
    return key


@dataclass(frozen=True)
class SnapshotCipher:
    key: bytes = field(repr=False)

    @classmethod
    def from_setting(cls, text: str) -> SnapshotCipher:
        return cls(parse_key(text))

    @property
    def key_id(self) -> str:
        """Names the key in the manifest without revealing it."""
        digest = hmac.new(self.key, b"laminar checkpoint key id", hashlib.sha256)
        return digest.hexdigest()[:16]

    def encrypt_file(self, source: Path, target: Path) -> int:
        """Encrypt `source` into `target` chunk by chunk; the size written."""
        if source.stat().st_size > MAX_PLAINTEXT:
            raise StorageError(
                f"snapshot of {source.stat().st_size:,} bytes is over AES-GCM's limit of "
                f"{MAX_PLAINTEXT:,} bytes for one encryption; unset {KEY_SETTING} (and use "
                "the store's server-side encryption) for state this large"
            )
        nonce = os.urandom(NONCE_BYTES)
        encryptor = Cipher(algorithms.AES(self.key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(MAGIC + nonce)
        with source.open("rb") as plain, target.open("wb") as out:
            out.write(MAGIC + nonce)
            while chunk := plain.read(CHUNK):
                out.write(encryptor.update(chunk))
            out.write(encryptor.finalize())
            out.write(encryptor.tag)
        return target.stat().st_size

    def decrypt_file(self, source: Path, target: Path, what: str) -> None:
        """Decrypt `source` into `target`; SnapshotDecryptError (and no target) if the tag,
        and so the key or the bytes, is wrong."""
        size = source.stat().st_size
        header = len(MAGIC) + NONCE_BYTES
        with source.open("rb") as sealed:
            if size < header + TAG_BYTES or sealed.read(len(MAGIC)) != MAGIC:
                raise SnapshotDecryptError(f"{what} is not a Laminar encrypted snapshot")
            nonce = sealed.read(NONCE_BYTES)
            sealed.seek(size - TAG_BYTES)
            tag = sealed.read(TAG_BYTES)
            sealed.seek(header)
            decryptor = Cipher(algorithms.AES(self.key), modes.GCM(nonce, tag)).decryptor()
            decryptor.authenticate_additional_data(MAGIC + nonce)
            remaining = size - header - TAG_BYTES
            try:
                with target.open("wb") as out:
                    while remaining > 0:
                        chunk = sealed.read(min(CHUNK, remaining))
                        remaining -= len(chunk)
                        out.write(decryptor.update(chunk))
                    out.write(decryptor.finalize())
            except InvalidTag:
                target.unlink(missing_ok=True)
                raise SnapshotDecryptError(
                    f"{what} does not decrypt with {KEY_SETTING} (key id {self.key_id}): "
                    "the key is wrong or the object was altered"
                ) from None
