"""Prediction ids and the durable prediction log the feedback loop reads.

Each worker appends JSON lines to its own segment under ``{home}/predictions/``. A record is written with
``os.write`` before its response is sent, so a killed worker loses no answered prediction (the kernel holds
the bytes); a background thread calls ``fsync`` at most ``fsync_interval`` seconds after a write, bounding
what a power loss could take. The thread, not the writer: an ``fsync`` takes milliseconds, and the writer is
the event loop answering requests.

With the workspace key every line is sealed on its own (AES-256-GCM, then base64: see
:mod:`modelfab.traffic.sealing`), so an appended line never depends on the ones before it. A segment is
left for a new one after ``segment_age`` seconds as well as after ``segment_bytes``, so retention can
delete a segment by its age without racing a writer that still holds it open.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from modelfab.errors import EncryptionError
from modelfab.store import keys
from modelfab.traffic import sealing

__all__ = ["PredictionLog", "encode_record", "new_prediction_id", "read_predictions"]

log = logging.getLogger("modelfab.serve")

SUFFIX = ".jsonl"
SEGMENT_AGE_S = 3600.0


_ids = itertools.count()
_id_prefix = ""


def _new_id_prefix() -> None:
    # Drawn again in every forked worker, so no two processes share a prefix (nor a counter's values).
    global _ids, _id_prefix
    _id_prefix = os.urandom(4).hex()
    _ids = itertools.count(int.from_bytes(os.urandom(4)) << 8)


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def new_prediction_id() -> str:
    """A 32-hex-digit id that sorts by creation time: 48-bit milliseconds, then 32 random bits drawn per
    process and a 48-bit per-process counter (starting at a random value): unique without a system call."""
    return f"{time.time_ns() // 1_000_000:012x}{_id_prefix}{next(_ids) & 0xFFFFFFFFFFFF:012x}"


def _fallback(value: Any) -> Any:
    """What orjson cannot write itself: strings and bytes (BYTES tensors), non-contiguous arrays."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in value.ravel()]
        return np.ascontiguousarray(value)
    raise TypeError(f"cannot log a value of type {type(value).__name__}")


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One log line (without its newline); numeric arrays are written by orjson straight from numpy."""
    return orjson.dumps(record, default=_fallback, option=orjson.OPT_SERIALIZE_NUMPY)


class PredictionLog:
    """Append-only, per-process JSON lines segments; safe to call from several threads."""

    def __init__(
        self,
        home: Path,
        *,
        worker: str = "0",
        fsync_interval: float = 0.2,
        segment_bytes: int = 64 << 20,
        segment_age: float = SEGMENT_AGE_S,
        key: bytes | None = None,
    ) -> None:
        """``key``: the workspace key (default: the one the workspace opened for ``home`` in this
        process uses); a folder sealed with another key, or sealed while no key is given, is refused."""
        self.folder = Path(home) / "predictions"
        self.folder.mkdir(parents=True, exist_ok=True)
        key = key if key is not None else keys.for_home(home)
        sealing.check_folder(self.folder, key, create=True)
        self._sealer = sealing.Sealer(key) if key is not None else None
        self._segment_age = segment_age
        self._worker = worker
        self._fsync_interval = fsync_interval
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._fd = -1
        self._written = 0
        self._dirty = False
        self._closing = threading.Event()
        self._syncer: threading.Thread | None = None
        self._open_segment()

    def _open_segment(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        name = f"{time.time_ns():020d}-w{self._worker}-{os.getpid()}{SUFFIX}"
        self._fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._written = 0
        self._opened = time.monotonic()

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write records (``id``, ``model``, ``version``, ``time``, ``inputs``, ``outputs``) in one call."""
        if records:
            self.write_lines([encode_record(r) for r in records])

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Append lines made by :func:`encode_record`, in one ``os.write`` where the kernel takes it all."""
        if self._sealer is not None:
            lines = [self._sealer.seal_line(line) for line in lines]
        data = b"\n".join(lines) + b"\n"
        with self._lock:
            if self._fd < 0:
                raise OSError("prediction log is closed")
            if time.monotonic() - self._opened > self._segment_age:
                self._open_segment()
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._written += len(data)
            self._dirty = True
            if self._written >= self._segment_bytes:
                self._open_segment()
            if self._syncer is None:
                self._syncer = threading.Thread(target=self._sync_loop, name="modelfab-predlog", daemon=True)
                self._syncer.start()

    def _sync_loop(self) -> None:
        while not self._closing.wait(self._fsync_interval):
            try:
                self.sync(only_if_written=True)
            except OSError as exc:  # keep trying: the next interval may succeed (a full disk freed)
                log.warning("cannot fsync the prediction log: %s", exc)

    def sync(self, *, only_if_written: bool = False) -> None:
        """Flush written records to stable storage (without holding up writers meanwhile)."""
        with self._lock:
            if self._fd < 0 or (only_if_written and not self._dirty):
                return
            self._dirty = False
            fd = os.dup(self._fd)  # a segment switch may close ours while this one syncs
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._closing.set()
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join()
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def read_predictions(home: Path | str, key: bytes | None = None) -> Iterator[dict[str, Any]]:
    """Every logged prediction under ``{home}/predictions``, segment by segment in creation order.

    A torn last line (a worker killed mid-write, before its response went out) is skipped, and so is a
    sealed line that fails its check. ``key``: as for :class:`PredictionLog`.
    """
    from cryptography.exceptions import InvalidTag

    folder = Path(home) / "predictions"
    if not folder.is_dir():
        return
    key = key if key is not None else keys.for_home(home)
    sealing.check_folder(folder, key, create=False)
    sealer = sealing.Sealer(key) if key is not None else None
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        with path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                if sealing.is_sealed_line(line):
                    if sealer is None:
                        raise EncryptionError(
                            f"the prediction log {path} is encrypted and no key is set; "
                            "set MODELFAB_ENCRYPTION_KEY or MODELFAB_ENCRYPTION_KEY_FILE"
                        )
                    try:
                        line = sealer.open_line(line.rstrip(b"\n"))
                    except (InvalidTag, ValueError):
                        continue
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
