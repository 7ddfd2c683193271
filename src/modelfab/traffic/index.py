"""The prediction index: servers' prediction logs, tailed into the ``prediction_rows`` table.

Each server worker appends JSON lines to its own segment file; this module reads every segment from the
byte offset it reached last time (stored per segment in ``predlog_offsets``), splits multi-row predictions
into one row each, and inserts them, skipping rows already there. Offsets and rows commit together, so a
reader killed halfway re-reads from the last committed offset and the insert-ignore absorbs the overlap.
Several readers (the feedback route in every worker, the loop) may sync at once: SQLite admits one writer
at a time, PostgreSQL readers of one source take an advisory lock.

A line longer than ``max_line_bytes`` is skipped, counted in :attr:`PredictionIndex.oversized_lines` and
logged (where, how long, never its content); indexing goes on past it, even when it is longer than a whole
read chunk. With the workspace key, sealed lines are opened and feature values are sealed again per row
before they reach the database (see :mod:`modelfab.traffic.sealing`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from modelfab.errors import EncryptionError
from modelfab.store import keys
from modelfab.store import schema as t
from modelfab.store.db import write_tx
from modelfab.store.sqlutil import insert_ignore, serialize
from modelfab.traffic import sealing

__all__ = ["MAX_LINE_BYTES", "PredictionIndex", "explode_record", "source_id"]

log = logging.getLogger("modelfab.traffic")

SUFFIX = ".jsonl"
CHUNK_BYTES = 16 << 20
MAX_LINE_BYTES = 1 << 20
SCAN_BYTES = 1 << 20
INSERT_BATCH = 5000


def source_id(home: Path) -> str:
    """A stable name for one server home on one host (log segments are local files)."""
    where = f"{socket.gethostname()}:{Path(home).resolve()}"
    return hashlib.sha256(where.encode()).hexdigest()[:32]


def _cell(value: Any) -> Any:
    # Tensors of shape [n, 1] arrive as [[v], [v], ...]; one feature per input is the factory's shape.
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _score(outputs: dict[str, Any]) -> float | None:
    """The number drift and metrics watch: P(positive class) for binary, top probability for
    multi-class, the value itself for regression."""
    proba = outputs.get("probabilities")
    if isinstance(proba, list) and proba and all(isinstance(p, int | float) for p in proba):
        return float(proba[1]) if len(proba) == 2 else float(max(proba))
    for value in outputs.values():
        v = _cell(value)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def explode_record(
    doc: dict[str, Any], tenant: str, sealer: sealing.Sealer | None = None
) -> Iterator[dict[str, Any]]:
    """One logged prediction (possibly several rows) as ``prediction_rows`` rows; with a sealer the
    feature values are sealed."""
    inputs: dict[str, Any] = doc.get("inputs") or {}
    outputs: dict[str, Any] = doc.get("outputs") or {}
    first: Any = next(iter(inputs.values()), [])
    n = len(first) if isinstance(first, list) else 1
    shadow = bool(doc.get("shadow"))
    key = doc.get("request_key")
    for i in range(n):
        feats = {
            k: _cell(v[i]) if isinstance(v, list) and len(v) == n else _cell(v) for k, v in inputs.items()
        }
        outs = {
            k: _cell(v[i]) if isinstance(v, list) and len(v) == n else _cell(v) for k, v in outputs.items()
        }
        label = outs.get("label")
        pid = str(doc["id"])
        yield {
            "tenant": tenant,
            "id": pid,
            "row_index": i,
            "shadow": shadow,
            "model": str(doc["model"]),
            "version": int(doc["version"]),
            "predicted_at": float(doc.get("time") or 0.0),
            "request_key": None if key is None else str(key)[:200],
            "features": sealing.seal_features(sealer, feats, pid, i),
            "outputs": orjson.dumps(outs).decode(),
            "score": _score(outs),
            "label": None if label is None else str(label),
        }


class PredictionIndex:
    """Keeps ``prediction_rows`` up to date with the prediction log under one server home.

    ``key``: the workspace key (default: the one the workspace opened for ``home`` in this process uses).
    ``max_line_bytes``: longer lines are skipped and counted; ``chunk_bytes``: the most read per step.
    """

    def __init__(
        self,
        engine: Engine,
        home: Path,
        tenant: str = "default",
        *,
        key: bytes | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.engine = engine
        self.folder = Path(home) / "predictions"
        self.tenant = tenant
        self.source = source_id(Path(home))
        self.key = key if key is not None else keys.for_home(home)
        self._sealer = sealing.Sealer(self.key) if self.key is not None else None
        self.max_line_bytes = max_line_bytes
        # A chunk always holds a line of the largest size allowed, so only oversized lines need a scan.
        self.chunk_bytes = max(chunk_bytes, max_line_bytes + 1)
        self.oversized_lines = 0
        self.unreadable_lines = 0

    @classmethod
    def for_settings(cls, engine: Engine, settings: Any) -> PredictionIndex:
        """The index of a workspace's home, with its key and line limit."""
        return cls(
            engine,
            Path(settings.home),
            settings.tenant,
            key=settings.key_bytes(),
            max_line_bytes=settings.line_limit_bytes,
        )

    def sync(self) -> int:
        """Index every complete line written since the last sync. Returns the rows added."""
        if not self.folder.is_dir():
            return 0
        sealing.check_folder(self.folder, self.key, create=False)
        sizes = {}
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            with contextlib.suppress(FileNotFoundError):  # retention deleted it meanwhile
                sizes[path.name] = path.stat().st_size
        done = self._offsets()
        added = 0
        for name, size in sizes.items():
            while done.get(name, 0) < size:
                try:
                    moved, rows = self._advance(name, size)
                except FileNotFoundError:
                    break  # deleted by retention: it was fully indexed
                added += rows
                if moved == done.get(name, 0):
                    break  # only a torn line left: the writer finishes it later
                done[name] = moved
        return added

    def offsets(self) -> dict[str, int]:
        """How far each segment of this home has been indexed (bytes)."""
        return self._offsets()

    def _offsets(self) -> dict[str, int]:
        o = t.predlog_offsets
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(o.c.file, o.c.byte_offset).where(o.c.source == self.source))
            return {r.file: int(r.byte_offset) for r in rows}

    def _advance(self, name: str, size: int) -> tuple[int, int]:
        """Index the next chunk of one segment in one transaction; returns (new offset, rows)."""
        o = t.predlog_offsets
        with write_tx(self.engine) as conn:
            serialize(conn, "predindex", self.source)
            start = conn.execute(
                sa.select(o.c.byte_offset).where(o.c.source == self.source, o.c.file == name)
            ).scalar()
            start = int(start or 0)
            with (self.folder / name).open("rb") as fh:
                fh.seek(start)
                data = fh.read(min(self.chunk_bytes, max(0, size - start)))
                end = data.rfind(b"\n") + 1
                if end == 0:
                    if len(data) < self.chunk_bytes:
                        return start, 0  # a line still being written (or torn by a killed writer)
                    # One line longer than a whole chunk: find its end without holding it in memory.
                    stop = _next_newline(fh, start + len(data), size)
                    if stop is None:
                        return start, 0
                    self._oversized(name, start, stop - start)
                    _upsert_offset(conn, self.source, name, stop + 1)
                    return stop + 1, 0
            rows = list(self._rows(name, start, data[:end]))
            for i in range(0, len(rows), INSERT_BATCH):
                insert_ignore(conn, t.prediction_rows, rows[i : i + INSERT_BATCH])
            _upsert_offset(conn, self.source, name, start + end)
        return start + end, len(rows)

    def _oversized(self, name: str, at: int, length: int) -> None:
        self.oversized_lines += 1
        log.warning(
            "prediction log %s: skipped the line at byte %d: %d bytes is over the %d-byte limit",
            name,
            at,
            length,
            self.max_line_bytes,
        )

    def _rows(self, name: str, start: int, block: bytes) -> Iterator[dict[str, Any]]:
        from cryptography.exceptions import InvalidTag

        at = start
        for line in block[:-1].split(b"\n"):
            where, at = at, at + len(line) + 1
            if len(line) > self.max_line_bytes:
                self._oversized(name, where, len(line))
                continue
            if sealing.is_sealed_line(line):
                if self._sealer is None:
                    raise EncryptionError(
                        f"the prediction log {self.folder / name} is encrypted and no key is set; "
                        "set MODELFAB_ENCRYPTION_KEY or MODELFAB_ENCRYPTION_KEY_FILE to the workspace key"
                    )
                try:
                    line = self._sealer.open_line(line)
                except (InvalidTag, ValueError):
                    self._unreadable(name, where, "it cannot be decrypted (altered or damaged)")
                    continue
            try:
                doc = orjson.loads(line)
                yield from explode_record(doc, self.tenant, self._sealer)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                self._unreadable(name, where, "it is not a prediction record")

    def _unreadable(self, name: str, at: int, why: str) -> None:
        # Counted, and logged without the line: it may hold feature values.
        self.unreadable_lines += 1
        log.warning("prediction log %s: skipped the line at byte %d: %s", name, at, why)


def _next_newline(fh: BinaryIO, pos: int, size: int) -> int | None:
    fh.seek(pos)
    while pos < size:
        block = fh.read(min(SCAN_BYTES, size - pos))
        if not block:
            return None
        found = block.find(b"\n")
        if found >= 0:
            return pos + found
        pos += len(block)
    return None


def _upsert_offset(conn: Connection, source: str, name: str, offset: int) -> None:
    o = t.predlog_offsets
    values = {"source": source, "file": name, "byte_offset": offset, "updated_at": datetime.now(UTC)}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        ins: Any = pg_insert(o)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        ins = sqlite_insert(o)
    conn.execute(
        ins.values(**values).on_conflict_do_update(
            index_elements=[o.c.source, o.c.file],
            set_={"byte_offset": sa.func.max(ins.excluded.byte_offset, o.c.byte_offset)}
            if conn.dialect.name == "sqlite"
            else {"byte_offset": sa.func.greatest(ins.excluded.byte_offset, o.c.byte_offset)},
        )
    )
