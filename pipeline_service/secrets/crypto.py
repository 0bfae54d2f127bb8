"""Encryption of secret values at rest: AES-256-GCM with a key derived (HKDF-SHA256) from
LAMINAR_SECRET_KEY. The tenant and the secret's name are the associated data, so a ciphertext
copied onto another row (or tenant) does not decrypt."""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = "v1"
MIN_KEY_LENGTH = 16


class SecretKeyError(ValueError):
    """No usable key, or a value that does not decrypt with it."""


class SecretBox:
    def __init__(self, key: str) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise SecretKeyError(
                f"LAMINAR_SECRET_KEY must be at least {MIN_KEY_LENGTH} characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"laminar tenant secrets"
        ).derive(key.encode())
        self._aead = AESGCM(derived)

    @staticmethod
    def _context(tenant_id: int, name: str) -> bytes:
        return f"{tenant_id}/{name}".encode()

    def seal(self, tenant_id: int, name: str, value: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode(), self._context(tenant_id, name))
        return f"{VERSION}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, tenant_id: int, name: str, stored: str) -> str:
        version, _, body = stored.partition(":")
        if version != VERSION:
            raise SecretKeyError(f"secret '{name}': unknown format {version!r}")
        raw = base64.b64decode(body)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], self._context(tenant_id, name)).decode()
        except InvalidTag:
            raise SecretKeyError(
                f"secret '{name}' does not decrypt: LAMINAR_SECRET_KEY differs from the key it "
                "was written with"
            ) from None
