"""Metrics on a holdout, and the gate that decides whether a version may become champion."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelfab.recipe import LOWER_IS_BETTER, Gate

__all__ = ["apply_gate", "better", "score_all"]


def score_all(task: str, y_true: Any, pred: Any, proba: Any | None, classes: Any | None) -> dict[str, float]:
    """Every metric that fits the task; roc_auc/log_loss are skipped when probabilities are unusable."""
    from sklearn import metrics as m

    out: dict[str, float] = {}
    if task == "regression":
        err = np.asarray(pred, dtype=float) - np.asarray(y_true, dtype=float)
        out["rmse"] = float(np.sqrt(np.mean(err**2)))
        out["mae"] = float(np.mean(np.abs(err)))
        out["r2"] = float(m.r2_score(y_true, pred)) if len(y_true) > 1 else float("nan")
        return _finite(out)
    out["accuracy"] = float(m.accuracy_score(y_true, pred))
    binary = classes is not None and len(classes) == 2
    out["f1"] = float(
        m.f1_score(y_true, pred, average="binary" if binary else "macro", pos_label=_pos(classes))
    )
    if proba is not None and classes is not None and len(np.unique(y_true)) >= 2:
        try:
            if binary:
                out["roc_auc"] = float(m.roc_auc_score(y_true == classes[1], proba[:, 1]))
            else:
                out["roc_auc"] = float(m.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes))
        except ValueError:
            pass
        out["log_loss"] = float(m.log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=classes))
    return _finite(out)


def _pos(classes: Any | None) -> Any:
    return classes[1] if classes is not None and len(classes) == 2 else 1


def _finite(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if math.isfinite(v)}


def better(metric: str, a: float, b: float, margin: float = 0.0) -> bool:
    """Whether score ``a`` beats ``b`` by at least ``margin`` for ``metric``."""
    return a <= b - margin if metric in LOWER_IS_BETTER else a >= b + margin


def apply_gate(metric: str, score: float | None, gate: Gate, champion: float | None) -> tuple[bool, str]:
    """(passed, reason) for a holdout score against the recipe's gate and the current champion."""
    if score is None:
        return False, f"{metric} could not be computed on the holdout"
    if gate.min is not None and score < gate.min:
        return False, f"{metric} {score:.4f} is below the gate minimum {gate.min}"
    if gate.max is not None and score > gate.max:
        return False, f"{metric} {score:.4f} is above the gate maximum {gate.max}"
    margin = gate.beat_champion_by
    if margin is not None and champion is not None and not better(metric, score, champion, margin):
        return False, f"{metric} {score:.4f} does not beat the champion's {champion:.4f} by {margin}"
    return True, "passed the gate"
