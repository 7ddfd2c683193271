"""Reading windows of indexed prediction rows: the most recent rows and labelled rows per model version.

One SQL statement serves a whole pass: window functions rank each version's rows newest first, overall
and among labelled rows, and keep the first ``window`` of each, so watching 1,000 models costs one query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from modelfab.store import keys
from modelfab.store import schema as t
from modelfab.traffic.sealing import load_features

__all__ = ["Rows", "labelled_rows", "recent_rows", "trial_rows"]

PAIR_CHUNK = 400


@dataclass
class Rows:
    """Columns of prediction rows. ``features`` and ``outputs`` stay JSON text until asked for."""

    ids: list[str]
    row_index: list[int]
    version: np.ndarray
    shadow: np.ndarray
    predicted_at: np.ndarray
    score: np.ndarray  # NaN where the output had no number
    label: list[str | None]
    outcome: list[str | None]
    features_json: list[str]
    outputs_json: list[str]
    in_window: np.ndarray  # among the newest ``window`` rows of the version (drift window)
    key: bytes | None = None  # opens features sealed at rest

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_records(
        cls, recs: Sequence[Any], in_window: Sequence[bool] | None = None, key: bytes | None = None
    ) -> Rows:
        return cls(
            ids=[r.id for r in recs],
            row_index=[int(r.row_index) for r in recs],
            version=np.fromiter((r.version for r in recs), dtype=np.int64, count=len(recs)),
            shadow=np.fromiter((bool(r.shadow) for r in recs), dtype=bool, count=len(recs)),
            predicted_at=np.fromiter((r.predicted_at for r in recs), dtype=float, count=len(recs)),
            score=np.fromiter(
                (np.nan if r.score is None else r.score for r in recs), dtype=float, count=len(recs)
            ),
            label=[r.label for r in recs],
            outcome=[r.outcome for r in recs],
            features_json=[r.features for r in recs],
            outputs_json=[r.outputs for r in recs],
            in_window=np.ones(len(recs), dtype=bool)
            if in_window is None
            else np.asarray(in_window, dtype=bool),
            key=key,
        )

    def take(self, mask: np.ndarray) -> Rows:
        idx = np.flatnonzero(mask)
        return Rows(
            ids=[self.ids[i] for i in idx],
            row_index=[self.row_index[i] for i in idx],
            version=self.version[idx],
            shadow=self.shadow[idx],
            predicted_at=self.predicted_at[idx],
            score=self.score[idx],
            label=[self.label[i] for i in idx],
            outcome=[self.outcome[i] for i in idx],
            features_json=[self.features_json[i] for i in idx],
            outputs_json=[self.outputs_json[i] for i in idx],
            in_window=self.in_window[idx],
            key=self.key,
        )

    @property
    def labelled(self) -> np.ndarray:
        return np.fromiter((o is not None for o in self.outcome), dtype=bool, count=len(self.outcome))

    def features(self) -> list[dict[str, Any]]:
        return load_features(self.features_json, self.ids, self.row_index, self.key)

    def outputs(self) -> list[dict[str, Any]]:
        return [orjson.loads(o) for o in self.outputs_json]


_COLUMNS = ("id", "row_index", "version", "shadow", "predicted_at", "score", "label", "outcome")


def _cols(p: sa.Table) -> list[Any]:
    return [p.c[c] for c in _COLUMNS] + [p.c.features, p.c.outputs]


def recent_rows(
    engine: Engine, tenant: str, pairs: Sequence[tuple[str, int]], window: int, since: float | None = None
) -> dict[tuple[str, int], Rows]:
    """For each (model, version): its newest ``window`` served rows (the drift window) together with its
    newest ``window`` labelled rows (the metric window); shadow rows are not served rows. ``since``
    (epoch seconds) also drops rows predicted earlier: windows by count and by time."""
    p = t.prediction_rows
    out: dict[tuple[str, int], Rows] = {}
    pairs = sorted(set(pairs))
    with engine.connect() as conn:
        for i in range(0, len(pairs), PAIR_CHUNK):
            chunk = pairs[i : i + PAIR_CHUNK]
            part = sa.tuple_(p.c.model, p.c.version)
            newest = sa.func.row_number().over(
                partition_by=[p.c.model, p.c.version], order_by=p.c.predicted_at.desc()
            )
            newest_labelled = sa.func.row_number().over(
                partition_by=[p.c.model, p.c.version, p.c.outcome.is_(None)], order_by=p.c.predicted_at.desc()
            )
            inner = (
                sa.select(p.c.model, *_cols(p), newest.label("rn"), newest_labelled.label("rl"))
                .where(p.c.tenant == tenant, p.c.shadow.is_(False), part.in_(chunk))
                .where(p.c.predicted_at >= since if since is not None else sa.true())
                .subquery()
            )
            q = (
                sa.select(inner)
                .where(
                    sa.or_(inner.c.rn <= window, sa.and_(inner.c.outcome.is_not(None), inner.c.rl <= window))
                )
                .order_by(inner.c.model, inner.c.version)
            )
            records = conn.execute(q).all()
            if not records:
                continue
            # Columns at C speed (zip), then one slice per version: no per-row attribute lookups.
            cols = list(zip(*records, strict=True))
            models, versions = cols[0], cols[3]
            start = 0
            for end in range(1, len(records) + 1):
                if end == len(records) or models[end] != models[start] or versions[end] != versions[start]:
                    out[(models[start], int(versions[start]))] = _from_columns(
                        cols, start, end, window, keys.for_engine(engine)
                    )
                    start = end
    return out


def _from_columns(cols: list[tuple[Any, ...]], a: int, b: int, window: int, key: bytes | None) -> Rows:
    # model, id, row_index, version, shadow, predicted_at, score, label, outcome, features, outputs, rn, rl
    n = b - a
    score = np.array(cols[6][a:b], dtype=float)  # None becomes NaN
    return Rows(
        ids=list(cols[1][a:b]),
        row_index=list(cols[2][a:b]),
        version=np.array(cols[3][a:b], dtype=np.int64),
        shadow=np.zeros(n, dtype=bool),
        predicted_at=np.array(cols[5][a:b], dtype=float),
        score=score,
        label=list(cols[7][a:b]),
        outcome=list(cols[8][a:b]),
        features_json=list(cols[9][a:b]),
        outputs_json=list(cols[10][a:b]),
        in_window=np.array(cols[11][a:b], dtype=np.int64) <= window,
        key=key,
    )


def labelled_rows(engine: Engine, tenant: str, model: str, limit: int, after: float | None = None) -> Rows:
    """The newest ``limit`` labelled served rows of a model, any version, newest first."""
    p = t.prediction_rows
    q = sa.select(*_cols(p)).where(
        p.c.tenant == tenant, p.c.model == model, p.c.shadow.is_(False), p.c.outcome.is_not(None)
    )
    if after is not None:
        q = q.where(p.c.predicted_at > after)
    with engine.connect() as conn:
        recs = conn.execute(q.order_by(p.c.predicted_at.desc()).limit(limit)).all()
    return Rows.from_records(recs, key=keys.for_engine(engine))


def trial_rows(engine: Engine, tenant: str, model: str, since: float) -> Rows:
    """Every labelled row of a model predicted since a trial began (served and shadow)."""
    p = t.prediction_rows
    q = sa.select(*_cols(p)).where(
        p.c.tenant == tenant,
        p.c.model == model,
        p.c.predicted_at >= since,
        p.c.outcome.is_not(None),
    )
    with engine.connect() as conn:
        return Rows.from_records(conn.execute(q).all(), key=keys.for_engine(engine))
