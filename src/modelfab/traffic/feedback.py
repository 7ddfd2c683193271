"""Feedback: true outcomes attached to logged predictions, durable before they are acknowledged.

An outcome is stored on its prediction row (``prediction_rows.outcome``), so repeating feedback for the
same (id, row) overwrites it: the last one wins and the row counts once. One request is one transaction:
a batched lookup of the keys, then one batched UPDATE, then commit, then the answer.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from modelfab.errors import DataError, InvalidInputError
from modelfab.store import schema as t
from modelfab.store.db import write_tx
from modelfab.traffic.index import PredictionIndex

__all__ = ["FeedbackItem", "FeedbackResult", "FeedbackStore", "parse_items", "read_feedback_csv"]

MAX_ITEMS = 100_000
MAX_ID = 64
LOOKUP_CHUNK = 500
PEER_POLL_S = 0.2


@dataclass(frozen=True)
class FeedbackItem:
    id: str
    row: int
    outcome: str  # the outcome as JSON text


@dataclass
class FeedbackResult:
    accepted: int = 0
    unknown: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "unknown": self.unknown}


def _outcome_json(value: Any) -> str | None:
    """The outcome as JSON text, or None when it is not a label or a finite number."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str) and 0 < len(value) <= 1000:
        return orjson.dumps(value).decode()
    return None


def parse_items(body: Any) -> list[FeedbackItem]:
    """Validate a ``POST /v2/feedback`` body; errors name the item and the field."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise InvalidInputError(
            'feedback must be a JSON object {"items": [{"id": ..., "outcome": ...}, ...]}'
        )
    raw = body["items"]
    if len(raw) > MAX_ITEMS:
        raise InvalidInputError(f"{len(raw)} items is more than {MAX_ITEMS} per request; send them in parts")
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidInputError(f"items[{i}]: must be an object with id, row and outcome")
        unknown = set(item) - {"id", "row", "outcome"}
        if unknown:
            raise InvalidInputError(f"items[{i}]: unknown field {sorted(unknown)[0]!r}; use id, row, outcome")
        pid = item.get("id")
        if not isinstance(pid, str) or not pid or len(pid) > MAX_ID:
            raise InvalidInputError(
                f"items[{i}].id: must be the prediction id the server answered with (text, 1-{MAX_ID} chars)"
            )
        row = item.get("row", 0)
        if not isinstance(row, int) or isinstance(row, bool) or row < 0:
            raise InvalidInputError(f"items[{i}].row: must be a row number >= 0, got {row!r}")
        if "outcome" not in item:
            raise InvalidInputError(f"items[{i}].outcome: required (the true label or value)")
        outcome = _outcome_json(item["outcome"])
        if outcome is None:
            raise InvalidInputError(
                f"items[{i}].outcome: must be a label (text) or a finite number, got {item['outcome']!r:.60}"
            )
        items.append(FeedbackItem(pid, row, outcome))
    return items


def read_feedback_csv(path: str | Path) -> list[FeedbackItem]:
    """Read ``id,row,outcome`` lines (``row`` may be empty or absent); errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give a CSV file with columns id,row,outcome")
    items = []
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if "id" not in header or "outcome" not in header:
            raise DataError(f"{path}:1: the header must name the columns id and outcome (and optionally row)")
        at = {name: header.index(name) for name in ("id", "row", "outcome") if name in header}
        for line_no, cells in enumerate(reader, start=2):
            if not cells:
                continue
            if len(cells) != len(header):
                raise DataError(f"{path}:{line_no}: {len(cells)} fields, the header has {len(header)}")
            pid = cells[at["id"]].strip()
            if not pid or len(pid) > MAX_ID:
                raise DataError(f"{path}:{line_no}: id must be a prediction id (1-{MAX_ID} characters)")
            row_text = cells[at["row"]].strip() if "row" in at else ""
            if row_text and not row_text.isdigit():
                raise DataError(f"{path}:{line_no}: row must be a number >= 0, got {row_text!r}")
            outcome = _outcome_json(_typed(cells[at["outcome"]].strip()))
            if outcome is None:
                raise DataError(f"{path}:{line_no}: outcome must be a label or a finite number")
            items.append(FeedbackItem(pid, int(row_text or 0), outcome))
    return items


def _typed(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class FeedbackStore:
    """Attaches outcomes to indexed predictions; looks in the prediction log for ids not indexed yet."""

    def __init__(
        self,
        engine: Engine,
        tenant: str = "default",
        index: PredictionIndex | None = None,
        peer_wait_s: float = 0.0,
    ) -> None:
        """``peer_wait_s``: with several servers on one database, a prediction another server made reaches
        the shared index within its sync interval; ids still unknown are looked up again until then."""
        self.engine = engine
        self.tenant = tenant
        self.index = index
        self.peer_wait_s = peer_wait_s

    def ingest(self, items: Sequence[FeedbackItem]) -> FeedbackResult:
        latest = {(i.id, i.row): i.outcome for i in items}  # last one wins
        if not latest:
            return FeedbackResult()
        known = self._known(latest)
        if len(known) < len(latest) and self.index is not None:
            # The server logs a prediction before it answers, so the id may just not be indexed yet.
            self.index.sync()
            known |= self._known([k for k in latest if k not in known])
        deadline = time.monotonic() + self.peer_wait_s
        while len(known) < len(latest) and time.monotonic() < deadline:
            time.sleep(PEER_POLL_S)
            known |= self._known([k for k in latest if k not in known])
        now = time.time()
        p = t.prediction_rows
        if known:
            with write_tx(self.engine) as conn:
                conn.execute(
                    sa.update(p)
                    .where(
                        p.c.tenant == self.tenant,
                        p.c.id == sa.bindparam("k_id"),
                        p.c.row_index == sa.bindparam("k_row"),
                    )
                    .values(outcome=sa.bindparam("k_outcome"), labelled_at=now),
                    [{"k_id": k[0], "k_row": k[1], "k_outcome": latest[k]} for k in latest if k in known],
                )
        unknown = list(dict.fromkeys(k[0] for k in latest if k not in known))
        return FeedbackResult(len(known), unknown)

    def _known(self, keys: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        keys = list(keys)
        ids = sorted({k[0] for k in keys})
        wanted = set(keys)
        p = t.prediction_rows
        found: set[tuple[str, int]] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(ids), LOOKUP_CHUNK):
                q = sa.select(p.c.id, p.c.row_index).where(
                    p.c.tenant == self.tenant, p.c.id.in_(ids[i : i + LOOKUP_CHUNK])
                )
                found.update(k for k in ((r[0], r[1]) for r in conn.execute(q)) if k in wanted)
        return found
