"""Prediction data sealed at rest with the workspace key (AES-256-GCM): log lines, indexed features.

A sealed log line is ``!`` and then base64 of nonce, ciphertext and tag: still one line, never valid JSON,
so readers tell it from a plain line (written before the workspace had a key) by its first byte. Nonces are
8 random bytes per sealer and a 4-byte counter: unique without a system call per line (the server seals on
its request path), redrawn in a forked child and before the counter wraps.

A folder of sealed segments holds a key check (``.key-check``), so a reader or writer with the wrong key
is refused before it reads a line, rather than skipping every line as damaged.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from modelfab.errors import EncryptionError

__all__ = ["Sealer", "check_folder", "is_sealed_line", "load_features", "seal_features"]

LINE_MARK = b"!"
TEXT_MARK = "!"
LOG_AD = b"modelfab prediction log v1"
CHECK_NAME = ".key-check"
_CHECK_PLAIN = b"modelfab prediction log key check v1"
_NONCE_PREFIX = 8
_COUNTER_LIMIT = 1 << 32

_sealers: weakref.WeakSet[Sealer] = weakref.WeakSet()


class Sealer:
    """Seals and opens bytes and text with one key; safe to share between threads."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)
        self._lock = threading.Lock()
        self._redraw()
        _sealers.add(self)

    def _redraw(self) -> None:
        self._prefix = os.urandom(_NONCE_PREFIX)
        self._count = 0

    def _nonce(self) -> bytes:
        with self._lock:
            if self._count >= _COUNTER_LIMIT:
                self._redraw()
            n = self._count
            self._count = n + 1
            return self._prefix + n.to_bytes(4, "big")

    def seal(self, plain: bytes, associated: bytes) -> bytes:
        nonce = self._nonce()
        return nonce + self._aead.encrypt(nonce, plain, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        """Raises ``cryptography.exceptions.InvalidTag`` for a wrong key or altered bytes."""
        return self._aead.decrypt(sealed[:12], sealed[12:], associated)

    def seal_line(self, line: bytes) -> bytes:
        return LINE_MARK + base64.b64encode(self.seal(line, LOG_AD))

    def open_line(self, line: bytes) -> bytes:
        return self.open(base64.b64decode(line[1:]), LOG_AD)

    def seal_text(self, text: str, associated: bytes) -> str:
        return TEXT_MARK + base64.b64encode(self.seal(text.encode(), associated)).decode()

    def open_text(self, text: str, associated: bytes) -> str:
        return self.open(base64.b64decode(text[1:]), associated).decode()


def _after_fork() -> None:
    # A child that inherits a sealer would repeat its parent's nonces.
    for sealer in list(_sealers):
        sealer._redraw()


os.register_at_fork(after_in_child=_after_fork)


def is_sealed_line(line: bytes) -> bool:
    return line[:1] == LINE_MARK


def check_folder(folder: Path, key: bytes | None, *, create: bool) -> None:
    """Refuse a missing or wrong key for a folder of sealed segments; with ``create`` (a writer) and a
    key, leave the check for later readers. The check is atomic: written aside, then renamed."""
    from cryptography.exceptions import InvalidTag

    path = Path(folder) / CHECK_NAME
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        if key is not None and create:
            tmp = path.with_name(f"{CHECK_NAME}.{os.getpid()}.tmp")
            tmp.write_bytes(Sealer(key).seal(_CHECK_PLAIN, LOG_AD))
            os.replace(tmp, path)
        return
    if key is None:
        raise EncryptionError(
            f"the prediction log in {folder} is encrypted and no key is set; "
            "set MODELFAB_ENCRYPTION_KEY or MODELFAB_ENCRYPTION_KEY_FILE to the workspace key"
        )
    try:
        if Sealer(key).open(blob, LOG_AD) == _CHECK_PLAIN:
            return
    except (InvalidTag, ValueError):
        pass
    raise EncryptionError(
        f"the prediction log in {folder} was encrypted with another key; use the key it was written with"
    )


def _row_ad(pid: str, row: int) -> bytes:
    # Bound to its prediction row, so sealed features cannot be moved to another row unnoticed.
    return f"{pid}\0{row}".encode()


def seal_features(sealer: Sealer | None, features: dict[str, Any], pid: str, row: int) -> str:
    text = orjson.dumps(features).decode()
    return text if sealer is None else sealer.seal_text(text, _row_ad(pid, row))


def load_features(
    texts: Sequence[str], ids: Sequence[str], rows: Sequence[int], key: bytes | None
) -> list[dict[str, Any]]:
    """Indexed feature values, sealed or plain, as dicts; a sealed value needs the workspace key."""
    from cryptography.exceptions import InvalidTag

    sealer = Sealer(key) if key is not None else None
    out = []
    for text, pid, row in zip(texts, ids, rows, strict=True):
        if text[:1] == TEXT_MARK:
            if sealer is None:
                raise EncryptionError(
                    "indexed prediction features are encrypted and no key is set; "
                    "set MODELFAB_ENCRYPTION_KEY or MODELFAB_ENCRYPTION_KEY_FILE to the workspace key"
                )
            try:
                text = sealer.open_text(text, _row_ad(pid, row))
            except (InvalidTag, ValueError, binascii.Error):
                raise EncryptionError(
                    f"the features of prediction {pid} row {row} cannot be decrypted: the key is wrong "
                    "or the row was altered; use the key they were indexed with"
                ) from None
        out.append(orjson.loads(text))
    return out
