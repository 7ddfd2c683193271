"""The loop's latest watch per live version, kept in the registry and rendered as Prometheus gauges.

The loop computes online metrics and drift once per pass; servers only read the result, so `/metrics`
stays cheap however many models are watched.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from modelfab.store import schema as t
from modelfab.store.db import write_tx

if TYPE_CHECKING:  # the loop's report type; traffic/ never imports the loop at run time
    from modelfab.iterate.monitor import VersionReport

__all__ = ["SnapshotMetrics", "metrics_text", "render", "save_snapshots"]


def save_snapshots(engine: Engine, tenant: str, reports: Iterable[VersionReport]) -> None:
    rows = [
        {
            "tenant": tenant,
            "name": r.model,
            "version": r.version,
            "metric": r.metric,
            "holdout": r.holdout,
            "online": r.online,
            "labelled": r.labelled,
            "rows": r.rows,
            "psi": {k: float(v) for k, v in r.psi.items()},
            "prediction_psi": r.prediction_psi,
            "updated_at": datetime.now(UTC),
        }
        for r in reports
    ]
    if not rows:
        return
    s = t.watch_snapshots
    key = sa.and_(
        s.c.tenant == tenant, s.c.name == sa.bindparam("d_name"), s.c.version == sa.bindparam("d_v")
    )
    with write_tx(engine) as conn:
        conn.execute(sa.delete(s).where(key), [{"d_name": r["name"], "d_v": r["version"]} for r in rows])
        conn.execute(sa.insert(s), rows)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ("NaN" if math.isnan(value) else "+Inf")


def render(rows: Iterable[Any]) -> str:
    """Prometheus text for snapshot rows (objects with the ``watch_snapshots`` columns)."""
    online, holdout, labelled, psi, pred = [], [], [], [], []
    for r in rows:
        base = f'model="{_label(r.name)}",version="{r.version}"'
        if r.online is not None:
            online.append(f'modelfab_online_metric{{{base},metric="{_label(r.metric)}"}} {_number(r.online)}')
        if r.holdout is not None:
            holdout.append(
                f'modelfab_holdout_metric{{{base},metric="{_label(r.metric)}"}} {_number(r.holdout)}'
            )
        labelled.append(f"modelfab_labelled_predictions{{{base}}} {r.labelled}")
        for feature, value in sorted((r.psi or {}).items()):
            psi.append(f'modelfab_feature_psi{{{base},feature="{_label(feature)}"}} {_number(value)}')
        if r.prediction_psi is not None:
            pred.append(f"modelfab_prediction_psi{{{base}}} {_number(r.prediction_psi)}")
    parts = []
    for name, help_text, lines in (
        ("modelfab_online_metric", "Recipe metric on labelled traffic (latest loop pass).", online),
        ("modelfab_holdout_metric", "Recipe metric on the training holdout.", holdout),
        ("modelfab_labelled_predictions", "Labelled predictions in the watch window.", labelled),
        ("modelfab_feature_psi", "Population stability index of an input against training.", psi),
        ("modelfab_prediction_psi", "Population stability index of the predictions.", pred),
    ):
        if lines:
            parts.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n" + "\n".join(lines) + "\n")
    return "".join(parts)


class SnapshotMetrics:
    """Renders the snapshots of one tenant, read at most every ``ttl`` seconds."""

    def __init__(self, engine: Engine, tenant: str, ttl: float = 5.0) -> None:
        self.engine = engine
        self.tenant = tenant
        self.ttl = ttl
        self._text = ""
        self._at = -math.inf
        self._lock = threading.Lock()

    def text(self) -> str:
        with self._lock:
            if time.monotonic() - self._at > self.ttl:
                s = t.watch_snapshots
                with self.engine.connect() as conn:
                    rows = conn.execute(
                        sa.select(s).where(s.c.tenant == self.tenant).order_by(s.c.name)
                    ).all()
                self._text = render(rows)
                self._at = time.monotonic()
            return self._text


def metrics_text(settings: Any) -> Callable[[], str]:
    """Extra ``/metrics`` text for the server: the loop's latest online metric and drift per version.
    The engine opens on first scrape, in the worker that serves it."""
    state: dict[str, SnapshotMetrics] = {}
    lock = threading.Lock()

    def text() -> str:
        with lock:
            if "m" not in state:
                from modelfab.store.db import SMALL_POOL, create_engine, migrate

                engine = create_engine(settings.resolved_database_url, **SMALL_POOL)
                migrate(engine, lock_dir=Path(settings.home))
                state["m"] = SnapshotMetrics(engine, settings.tenant)
            source = state["m"]
        return source.text()

    return text
