"""Content-addressed artifact store on fsspec: sha256-named blobs, temp-then-rename, verified on read."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from typing import Any

from modelfab.errors import IntegrityError, NotFoundError
from modelfab.store import crypto

__all__ = ["Artifact", "ArtifactStore", "sha256"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Artifact:
    digest: str
    size: int


class ArtifactStore:
    """Blobs keyed by the sha256 of their plain bytes.

    With a key, blobs are sealed with AES-256-GCM (the digest is bound as associated data, so a blob
    cannot be swapped for another). Every read checks the digest, encrypted or not.
    """

    def __init__(self, url: str, key: bytes | None = None) -> None:
        import fsspec

        self.url = url
        self.key = key
        fs, root = fsspec.core.url_to_fs(url)
        self.fs: Any = fs
        self.root: str = root.rstrip("/")
        self._local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        if self._local:
            os.makedirs(self.root, exist_ok=True)

    def path(self, digest: str) -> str:
        _check_digest(digest)
        return f"{self.root}/{digest[:2]}/{digest}"

    def exists(self, digest: str) -> bool:
        return bool(self.fs.exists(self.path(digest)))

    def put(self, data: bytes) -> Artifact:
        digest = sha256(data)
        final = self.path(digest)
        if self.fs.exists(final):
            return Artifact(digest, len(data))
        blob = crypto.encrypt(data, self.key, digest.encode()) if self.key else data
        tmp = f"{final}.tmp-{uuid.uuid4().hex}"
        if self._local:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, blob)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        else:
            self.fs.makedirs(os.path.dirname(final), exist_ok=True)
            with self.fs.open(tmp, "wb") as fh:
                fh.write(blob)
            self.fs.mv(tmp, final)
        return Artifact(digest, len(data))

    def delete(self, digest: str) -> int:
        """Remove a blob; returns the bytes freed (0 when it was not there). Callers first make sure no
        record names it: the store is content-addressed, so one blob may serve several records."""
        path = self.path(digest)
        try:
            size = int(self.fs.size(path))
            self.fs.rm(path)
        except FileNotFoundError:
            return 0
        return size

    def get(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            with self.fs.open(path, "rb") as fh:
                blob: bytes = fh.read()
        except FileNotFoundError:
            raise NotFoundError(f"artifact {digest} is missing from the store at {self.url}") from None
        what = f"artifact {digest}"
        data = crypto.decrypt(blob, self.key, digest.encode(), what) if crypto.is_encrypted(blob) else blob
        if sha256(data) != digest:
            raise IntegrityError(
                f"artifact {digest} is corrupt: its bytes do not match its sha256; "
                "re-produce or restore it from a backup"
            )
        return data


def _check_digest(digest: str) -> None:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise NotFoundError(f"{digest!r} is not a sha256 artifact digest")
