"""Checkpoints of a distributed job: digest-checked blobs, a manifest each, written off the training thread.

A checkpoint is complete once its manifest exists: the blob is written first (temp-then-rename, or put in
the content-addressed ArtifactStore), the manifest last, so a worker killed mid-write leaves at most an
orphan blob, never a manifest naming a half-written one.
"""

from __future__ import annotations

import io
import json
import os
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfab.errors import IntegrityError, NotFoundError

if TYPE_CHECKING:
    from modelfab.store.artifacts import ArtifactStore

__all__ = ["AsyncCheckpointer", "Checkpoint", "CheckpointStore", "cpu_copy"]


@dataclass(frozen=True)
class Checkpoint:
    step: int
    epoch: int
    batch: int
    digest: str
    size: int
    written_at: float


class CheckpointStore:
    """Checkpoints under a folder; with an ``ArtifactStore`` the blobs go there (encrypted at rest when the
    store has a key) and the folder keeps only the manifests. Picklable: workers rebuild the store. With
    an encrypted store give ``key_ref`` (:class:`modelfab.factory.context.KeyRef`): what is pickled for the
    ranks (a job file, Ray's object store) then says where the key is, never the key itself."""

    def __init__(self, root: str | Path, artifacts: ArtifactStore | None = None, key_ref: Any = None) -> None:
        self.root = Path(root)
        self._artifacts_url = artifacts.url if artifacts is not None else None
        self._artifacts_key = artifacts.key if artifacts is not None else None
        self._key_ref = key_ref
        self._artifacts = artifacts

    def __getstate__(self) -> dict[str, Any]:
        if self._artifacts_key is not None and self._key_ref is None:
            from modelfab.errors import EncryptionError

            raise EncryptionError(
                "an encrypted checkpoint store crosses to other processes only with a key_ref "
                "(modelfab.factory.context.KeyRef), never with the key"
            )
        return {**self.__dict__, "_artifacts": None, "_artifacts_key": None}

    def scoped(self, name: str) -> CheckpointStore:
        """The same store with the manifests in a subfolder: one per job, so a job never resumes another's."""
        scoped = CheckpointStore(self.root / name)
        scoped._artifacts_url, scoped._artifacts_key = self._artifacts_url, self._artifacts_key
        scoped._key_ref = self._key_ref
        scoped._artifacts = self._artifacts
        return scoped

    def _store(self) -> ArtifactStore | None:
        if self._artifacts is None and self._artifacts_url is not None:
            from modelfab.store.artifacts import ArtifactStore

            key = self._artifacts_key
            if key is None and self._key_ref is not None:
                key = self._key_ref.load()  # in a rank: from the same file or variable as the driver
            self._artifacts = ArtifactStore(self._artifacts_url, key)
        return self._artifacts

    def save(self, data: bytes, *, step: int, epoch: int, batch: int) -> Checkpoint:
        from modelfab.store.artifacts import sha256

        self.root.mkdir(parents=True, exist_ok=True)
        store = self._store()
        if store is not None:
            digest = store.put(data).digest
        else:
            digest = sha256(data)
            _write_atomic(self.root / "blobs" / digest, data)
        ckpt = Checkpoint(step, epoch, batch, digest, len(data), time.time())
        _write_atomic(self.root / f"ckpt-{step:010d}.json", json.dumps(asdict(ckpt)).encode())
        return ckpt

    def list(self) -> list[Checkpoint]:
        """Complete checkpoints, oldest first."""
        found = []
        for path in sorted(self.root.glob("ckpt-*.json")):
            try:
                found.append(Checkpoint(**json.loads(path.read_bytes())))
            except (OSError, ValueError, TypeError):
                continue
        return sorted(found, key=lambda c: c.step)

    def load(self, ckpt: Checkpoint) -> bytes:
        """The checkpoint's bytes, checked against its digest (IntegrityError when they differ)."""
        from modelfab.store.artifacts import sha256

        store = self._store()
        if store is not None:
            return store.get(ckpt.digest)
        try:
            data = (self.root / "blobs" / ckpt.digest).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"checkpoint blob {ckpt.digest} of step {ckpt.step} is missing") from None
        if sha256(data) != ckpt.digest:
            raise IntegrityError(
                f"checkpoint of step {ckpt.step} in {self.root} is corrupt: its bytes do not match sha256 "
                f"{ckpt.digest}"
            )
        return data

    def latest(self) -> tuple[Checkpoint, bytes] | None:
        """The newest checkpoint whose bytes verify; a corrupt or missing one is skipped for an older one."""
        for ckpt in reversed(self.list()):
            try:
                return ckpt, self.load(ckpt)
            except (IntegrityError, NotFoundError):
                continue
        return None

    def prune(self, keep: int) -> None:
        """Drop all but the newest ``keep`` manifests (and their folder blobs; artifact blobs stay, since
        the content-addressed store may share them)."""
        for ckpt in self.list()[:-keep] if keep > 0 else []:
            (self.root / f"ckpt-{ckpt.step:010d}.json").unlink(missing_ok=True)
            if self._artifacts_url is None:
                (self.root / "blobs" / ckpt.digest).unlink(missing_ok=True)


class AsyncCheckpointer:
    """Serialises and writes checkpoints on a background thread.

    The training thread pays only for the CPU copy of the tensors (``cpu_copy``) and, when the previous
    write is still running, for waiting on it: at most one write is in flight. ``stall_seconds`` adds up
    both.
    """

    def __init__(self, store: CheckpointStore, keep: int) -> None:
        self.store = store
        self.keep = keep
        self.written = 0
        self.stall_seconds = 0.0
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[dict[str, Any], int, int, int] | None] = queue.Queue(maxsize=1)
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="modelfab-checkpoint", daemon=True)
        self._thread.start()

    def submit(self, state: dict[str, Any], *, step: int, epoch: int, batch: int) -> None:
        start = time.perf_counter()
        self._idle.wait()
        snapshot = cpu_copy(state)
        self._idle.clear()
        self._queue.put((snapshot, step, epoch, batch))
        self.stall_seconds += time.perf_counter() - start

    def close(self) -> None:
        """Wait for the last write; raise its error, if any."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        import torch

        while (item := self._queue.get()) is not None:
            snapshot, step, epoch, batch = item
            try:
                buf = io.BytesIO()
                torch.save(snapshot, buf)
                self.store.save(buf.getvalue(), step=step, epoch=epoch, batch=batch)
                self.store.prune(self.keep)
                self.written += 1
            except BaseException as exc:  # surfaced by close(); a failed write must not kill training
                self.error = exc
            finally:
                self._idle.set()


def cpu_copy(obj: Any) -> Any:
    """A copy of a (nested) state dict whose tensors are detached CPU clones, so training can go on
    changing the originals while the copy is written."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
