"""AES-256-GCM encryption at rest for datasets and artifacts."""

from __future__ import annotations

import base64
import binascii
import os

from modelfab.errors import EncryptionError

__all__ = ["MAGIC", "decrypt", "encrypt", "is_encrypted", "parse_key"]

MAGIC = b"MFENC1\0"
NONCE_BYTES = 12


def parse_key(text: str, *, source: str) -> bytes:
    """Accept 64 hex characters or base64 of exactly 32 bytes."""
    text = text.strip()
    key: bytes | None = None
    if len(text) == 64:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = None
    if key is None:
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None or len(key) != 32:
        raise EncryptionError(
            f"the encryption key from {source} is not 32 bytes as 64 hex characters or base64; "
            "make one with: python -c 'import os; print(os.urandom(32).hex())'"
        )
    return key


def is_encrypted(blob: bytes) -> bool:
    return blob.startswith(MAGIC)


def encrypt(plain: bytes, key: bytes, associated: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plain, associated)


def decrypt(blob: bytes, key: bytes | None, associated: bytes, what: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if key is None:
        raise EncryptionError(
            f"{what} is encrypted and no key is set; "
            "set MODELFAB_ENCRYPTION_KEY or MODELFAB_ENCRYPTION_KEY_FILE"
        )
    body = blob[len(MAGIC) :]
    nonce, sealed = body[:NONCE_BYTES], body[NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, sealed, associated)
    except InvalidTag:
        raise EncryptionError(
            f"{what} cannot be decrypted: the key is wrong or the file was altered; "
            "use the key it was written with"
        ) from None
