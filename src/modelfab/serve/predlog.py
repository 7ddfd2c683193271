"""Prediction ids and the durable prediction log the feedback loop reads.

Each worker appends JSON lines to its own segment under ``{home}/predictions/``. A record is written with
``os.write`` before its response is sent, so a killed worker loses no answered prediction (the kernel holds
the bytes); ``fsync`` follows in small groups at most ``fsync_interval`` seconds apart, bounding what a power
loss could take.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from modelfab.serve.types import Array

__all__ = ["PredictionLog", "new_prediction_id", "read_predictions"]

SUFFIX = ".jsonl"


def new_prediction_id() -> str:
    """A 32-hex-digit id that sorts by creation time (48-bit milliseconds, 80 random bits)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def _jsonable(array: Array) -> Any:
    if array.dtype.kind in "OSU":
        return [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in array.ravel()]
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return np.ascontiguousarray(array)


class PredictionLog:
    """Append-only, per-process JSON lines segments; safe to call from several threads."""

    def __init__(
        self, home: Path, *, worker: str = "0", fsync_interval: float = 0.2, segment_bytes: int = 64 << 20
    ) -> None:
        self.folder = Path(home) / "predictions"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._worker = worker
        self._fsync_interval = fsync_interval
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._fd = -1
        self._written = 0
        self._last_sync = time.monotonic()
        self._open_segment()

    def _open_segment(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        name = f"{time.time_ns():020d}-w{self._worker}-{os.getpid()}{SUFFIX}"
        self._fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._written = 0

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write records (``id``, ``model``, ``version``, ``time``, ``inputs``, ``outputs``) in one call."""
        if not records:
            return
        lines = []
        for r in records:
            doc = dict(r)
            doc["inputs"] = {k: _jsonable(v) for k, v in r["inputs"].items()}
            doc["outputs"] = {k: _jsonable(v) for k, v in r["outputs"].items()}
            lines.append(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
        data = b"\n".join(lines) + b"\n"
        with self._lock:
            if self._fd < 0:
                raise OSError("prediction log is closed")
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._written += len(data)
            now = time.monotonic()
            if now - self._last_sync >= self._fsync_interval:
                os.fsync(self._fd)
                self._last_sync = now
            if self._written >= self._segment_bytes:
                self._open_segment()

    def sync(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                self._last_sync = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1


def read_predictions(home: Path | str) -> Iterator[dict[str, Any]]:
    """Every logged prediction under ``{home}/predictions``, segment by segment in creation order.

    A torn last line (a worker killed mid-write, before its response went out) is skipped.
    """
    folder = Path(home) / "predictions"
    if not folder.is_dir():
        return
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        with path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
