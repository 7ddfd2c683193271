"""The prediction index: servers' prediction logs, tailed into the ``prediction_rows`` table.

Each server worker appends JSON lines to its own segment file; this module reads every segment from the
byte offset it reached last time (stored per segment in ``predlog_offsets``), splits multi-row predictions
into one row each, and inserts them, skipping rows already there. Offsets and rows commit together, so a
reader killed halfway re-reads from the last committed offset and the insert-ignore absorbs the overlap.
Several readers (the feedback route in every worker, the loop) may sync at once: SQLite admits one writer
at a time, PostgreSQL readers of one source take an advisory lock.
"""

from __future__ import annotations

import hashlib
import math
import socket
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from modelfab.store import schema as t
from modelfab.store.db import write_tx
from modelfab.store.sqlutil import insert_ignore, serialize

__all__ = ["PredictionIndex", "explode_record", "source_id"]

SUFFIX = ".jsonl"
CHUNK_BYTES = 16 << 20
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


def explode_record(doc: dict[str, Any], tenant: str) -> Iterator[dict[str, Any]]:
    """One logged prediction (possibly several rows) as ``prediction_rows`` rows."""
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
        yield {
            "tenant": tenant,
            "id": str(doc["id"]),
            "row_index": i,
            "shadow": shadow,
            "model": str(doc["model"]),
            "version": int(doc["version"]),
            "predicted_at": float(doc.get("time") or 0.0),
            "request_key": None if key is None else str(key)[:200],
            "features": orjson.dumps(feats).decode(),
            "outputs": orjson.dumps(outs).decode(),
            "score": _score(outs),
            "label": None if label is None else str(label),
        }


class PredictionIndex:
    """Keeps ``prediction_rows`` up to date with the prediction log under one server home."""

    def __init__(self, engine: Engine, home: Path, tenant: str = "default") -> None:
        self.engine = engine
        self.folder = Path(home) / "predictions"
        self.tenant = tenant
        self.source = source_id(Path(home))

    def sync(self) -> int:
        """Index every complete line written since the last sync. Returns the rows added."""
        if not self.folder.is_dir():
            return 0
        sizes = {p.name: p.stat().st_size for p in sorted(self.folder.glob(f"*{SUFFIX}"))}
        done = self._offsets()
        added = 0
        for name, size in sizes.items():
            while done.get(name, 0) < size:
                moved, rows = self._advance(name, size)
                added += rows
                if moved == done.get(name, 0):
                    break  # only a torn line left: the writer finishes it later
                done[name] = moved
        return added

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
                data = fh.read(min(CHUNK_BYTES, max(0, size - start)))
            end = data.rfind(b"\n") + 1
            if end == 0:
                return start, 0
            rows = list(self._rows(data[:end].splitlines()))
            for i in range(0, len(rows), INSERT_BATCH):
                insert_ignore(conn, t.prediction_rows, rows[i : i + INSERT_BATCH])
            _upsert_offset(conn, self.source, name, start + end)
        return start + end, len(rows)

    def _rows(self, lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
        for line in lines:
            try:
                doc = orjson.loads(line)
                yield from explode_record(doc, self.tenant)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line no reader could use; the server never writes one on purpose


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
