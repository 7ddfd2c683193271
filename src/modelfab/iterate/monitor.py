"""Watching model versions on their own traffic: online metric from feedback, input and prediction drift.

Everything a pass needs is read in one query (:func:`modelfab.iterate.window.recent_rows`) and computed
with numpy per version; reference profiles are read once per digest and kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelfab.factory.evaluate import score_all
from modelfab.iterate.drift import categorical_psi, numeric_psi
from modelfab.iterate.window import Rows, recent_rows
from modelfab.store import ModelVersion, Workspace

__all__ = [
    "ProfileCache",
    "VersionReport",
    "online_metric",
    "outcome_key",
    "score_outcomes",
    "task_of",
    "watch_versions",
]


@dataclass
class VersionReport:
    model: str
    version: int
    metric: str
    holdout: float | None
    online: float | None = None
    labelled: int = 0
    rows: int = 0
    psi: dict[str, float] = field(default_factory=dict)
    prediction_psi: float | None = None

    @property
    def worst_feature(self) -> str | None:
        return max(self.psi, key=lambda k: self.psi[k]) if self.psi else None

    @property
    def max_psi(self) -> float | None:
        return max(self.psi.values()) if self.psi else None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "metric": self.metric,
            "holdout": self.holdout,
            "online": self.online,
            "labelled": self.labelled,
            "rows": self.rows,
            "psi": {k: round(v, 6) for k, v in sorted(self.psi.items())},
            "max_psi": self.max_psi,
            "worst_feature": self.worst_feature,
            "prediction_psi": self.prediction_psi,
        }


def task_of(mv: ModelVersion) -> str:
    outputs = mv.signature.get("outputs") or []
    return "regression" if outputs and outputs[0].get("name") == "variable" else "classification"


def outcome_key(text: str | None) -> str | None:
    """A label or outcome as the text of its class (1, 1.0, true and "1" are the same class)."""
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def online_metric(mv: ModelVersion, rows: Rows, metric: str | None = None) -> float | None:
    """``metric`` (default: the version's own) on labelled rows, from what the model answered."""
    lab = rows.take(rows.labelled) if len(rows) else rows
    if len(lab) == 0:
        return None
    if task_of(mv) == "regression":
        return score_outcomes(mv, metric, lab.outcome, lab.label, None, lab.score)
    classes = mv.signature.get("classes") or []
    if len(classes) == 2:
        proba = np.column_stack([1.0 - lab.score, lab.score])
    else:
        proba = np.array(
            [o.get("probabilities") or [np.nan] * len(classes) for o in lab.outputs()], dtype=float
        )
    return score_outcomes(mv, metric, lab.outcome, lab.label, proba, None)


def score_outcomes(
    mv: ModelVersion,
    metric: str | None,
    outcomes: Sequence[str | None],
    labels: Sequence[Any],
    proba: np.ndarray | None,
    values: np.ndarray | None,
) -> float | None:
    """``metric`` of a version's answers (``labels`` + ``proba`` for classifiers, ``values`` for
    regressors) against outcomes (JSON text). Rows whose outcome is not one of the classes are skipped."""
    metric = metric or mv.metric
    if metric is None or not len(outcomes):
        return None
    if task_of(mv) == "regression":
        assert values is not None
        y = np.array([_number(o) for o in outcomes])
        ok = ~np.isnan(y) & ~np.isnan(values)
        if not ok.any():
            return None
        value = score_all("regression", y[ok], values[ok], None, None).get(metric)
    else:
        classes = [str(c) for c in mv.signature.get("classes") or []]
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index.get(outcome_key(o) or "", -1) for o in outcomes])
        pred = np.array([index.get(_label_key(lb), -1) for lb in labels])
        ok = y >= 0
        if proba is not None:
            ok &= ~np.isnan(proba).any(axis=1)
        if len(classes) < 2 or not ok.any():
            return None
        value = score_all(
            "classification", y[ok], pred[ok], None if proba is None else proba[ok], np.arange(len(classes))
        ).get(metric)
    return None if value is None or not math.isfinite(value) else float(value)


def _label_key(label: Any) -> str:
    if isinstance(label, bytes):
        label = label.decode(errors="replace")
    if isinstance(label, np.generic):
        label = label.item()
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    return str(label)


def _number(text: str | None) -> float:
    try:
        value = orjson.loads(text or "null")
        return float(value) if isinstance(value, int | float) else float("nan")
    except (orjson.JSONDecodeError, ValueError):
        return float("nan")


def drift(profile: dict[str, Any], rows: Rows) -> tuple[dict[str, float], float | None]:
    """PSI per input feature, and of the predictions, against the training profile."""
    served = rows.take(rows.in_window)
    if len(served) == 0:
        return {}, None
    feats = served.features()
    out: dict[str, float] = {}
    for name, ref in (profile.get("features") or {}).items():
        column = [f.get(name) for f in feats]
        if ref.get("kind") == "numeric":
            value = numeric_psi(ref, np.array([_float(v) for v in column], dtype=float))
        else:
            value = categorical_psi(ref, column)
        if value is not None:
            out[name] = value
    pred = profile.get("prediction")
    pred_psi = numeric_psi(pred, served.score, missing=False) if pred else None
    return out, pred_psi


def _float(v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


class ProfileCache:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws
        self._profiles: dict[str, dict[str, Any]] = {}

    def get(self, digest: str | None) -> dict[str, Any]:
        if digest is None:
            return {}
        if digest not in self._profiles:
            self._profiles[digest] = orjson.loads(self._ws.artifacts.get(digest))
        return self._profiles[digest]


def watch_versions(
    ws: Workspace,
    versions: Sequence[ModelVersion],
    window: int,
    profiles: ProfileCache | None = None,
    since: float | None = None,
) -> dict[tuple[str, int], VersionReport]:
    """Online metric and drift of each version over its recent window (one query for all); ``since``
    limits the window by time as well as by count."""
    profiles = profiles or ProfileCache(ws)
    pairs = [(v.name, v.version) for v in versions]
    rows = recent_rows(ws.engine, ws.registry.tenant, pairs, window, since)
    out: dict[tuple[str, int], VersionReport] = {}
    for mv in versions:
        key = (mv.name, mv.version)
        report = VersionReport(mv.name, mv.version, mv.metric or "", mv.score)
        r = rows.get(key)
        if r is not None:
            report.rows = int(r.in_window.sum())
            report.labelled = int(r.labelled.sum())
            report.online = online_metric(mv, r)
            report.psi, report.prediction_psi = drift(profiles.get(mv.profile_digest), r)
        out[key] = report
    return out
