"""What every job of a run shares: the plan, where artifacts go, and where to find the key (never the key).

A context crosses to workers once per run: inherited on fork by the local pool, serialized otherwise (Ray,
a spawned pool). Serialized, it carries the artifact store's URL and a :class:`KeyRef` (the key file's
path or the environment variable to read, plus a fingerprint to check the key found against), so an
encrypted workspace's key never sits in Ray's object store or a task argument.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfab.errors import EncryptionError
from modelfab.store import ArtifactStore

if TYPE_CHECKING:
    from modelfab.factory.plan import Plan
    from modelfab.settings import Settings

__all__ = ["JobContext", "KeyRef", "key_fingerprint"]

KEY_VARIABLE = "MODELFAB_ENCRYPTION_KEY"


def key_fingerprint(key: bytes) -> str:
    """A one-way tag of the key: tells a worker whether the key it found is the driver's."""
    return hmac.new(key, b"modelfab key fingerprint", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class KeyRef:
    """Where a worker finds the encryption key: a key file's path, else an environment variable."""

    fingerprint: str
    file: str | None = None
    variable: str = KEY_VARIABLE

    @classmethod
    def of(cls, settings: Settings) -> KeyRef | None:
        key = settings.key_bytes()
        if key is None:
            return None
        # The key in a variable wins over the file in Settings.key_bytes; workers look in the same place.
        file = None if settings.encryption_key else str(settings.encryption_key_file)
        return cls(key_fingerprint(key), file=file)

    def load(self) -> bytes:
        from modelfab.store.crypto import parse_key

        if self.file is not None:
            try:
                text, source = Path(self.file).read_text().strip(), self.file
            except OSError as exc:
                raise EncryptionError(
                    f"cannot read key file {self.file} where this job runs: {exc.strerror}; the file must "
                    "be at the same path on every worker (MODELFAB_ENCRYPTION_KEY_FILE)"
                ) from None
        else:
            found = os.environ.get(self.variable)
            if not found:
                raise EncryptionError(
                    f"the workspace is encrypted but {self.variable} is not set where this job runs; set it "
                    "(or MODELFAB_ENCRYPTION_KEY_FILE) in the workers' environment: modelfab does not send "
                    "the key to workers"
                )
            text, source = found, self.variable
        key = parse_key(text, source=source)
        if not hmac.compare_digest(key_fingerprint(key), self.fingerprint):
            raise EncryptionError(
                f"the key in {source} where this job runs is not the key of the run's workspace; "
                "give workers the same key"
            )
        return key


class JobContext:
    """The run's plan, artifact store and modelfab version, as jobs see them."""

    def __init__(self, plan: Plan, artifacts: ArtifactStore, version: str, key: KeyRef | None) -> None:
        if artifacts.key is not None and key is None:
            raise EncryptionError("an encrypted artifact store needs a KeyRef for its workers")
        self.plan = plan
        self.version = version
        self.artifacts_url = artifacts.url
        self.key = key
        self._artifacts: ArtifactStore | None = artifacts

    @property
    def artifacts(self) -> ArtifactStore:
        if self._artifacts is None:
            self._artifacts = ArtifactStore(self.artifacts_url, self.key.load() if self.key else None)
        return self._artifacts

    def __getstate__(self) -> dict[str, Any]:
        # The live store holds the key; a worker that receives this builds its own from the KeyRef.
        return {**self.__dict__, "_artifacts": None}
