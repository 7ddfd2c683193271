"""Metrics on a holdout, and the gate that decides whether a version may become champion."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelfab.recipe import LOWER_IS_BETTER, Gate

__all__ = ["apply_gate", "better", "score_all"]


def score_all(task: str, y_true: Any, pred: Any, proba: Any | None, classes: Any | None) -> dict[str, float]:
    """Every metric that fits the task, in plain numpy (scikit-learn's input checks cost more than the
    maths at these sizes; tests hold these to scikit-learn's values). roc_auc and log_loss need
    probabilities and two classes present in ``y_true``."""
    y_true = np.asarray(y_true)
    out: dict[str, float] = {}
    if task == "regression":
        y = y_true.astype(float)
        err = np.asarray(pred, dtype=float).ravel() - y
        out["rmse"] = float(np.sqrt(np.mean(err**2)))
        out["mae"] = float(np.mean(np.abs(err)))
        total = float(np.sum((y - y.mean()) ** 2))
        out["r2"] = 1.0 - float(np.sum(err**2)) / total if total > 0 else float("nan")
        return _finite(out)
    pred = np.asarray(pred)
    out["accuracy"] = float(np.mean(pred == y_true))
    labels = np.asarray(classes) if classes is not None else np.unique(np.concatenate([y_true, pred]))
    f1s = [_f1(y_true == c, pred == c) for c in (labels[1:] if len(labels) == 2 else labels)]
    out["f1"] = float(np.mean(f1s))
    if proba is not None and classes is not None and len(np.unique(y_true)) >= 2:
        proba = np.asarray(proba, dtype=float)
        if len(labels) == 2:
            out["roc_auc"] = _auc(y_true == labels[1], proba[:, 1])
        else:
            present = [i for i, c in enumerate(labels) if 0 < np.sum(y_true == c) < len(y_true)]
            out["roc_auc"] = float(np.mean([_auc(y_true == labels[i], proba[:, i]) for i in present]))
        index = np.searchsorted(labels, y_true)
        p = np.clip(proba / proba.sum(axis=1, keepdims=True), 1e-15, 1.0)
        out["log_loss"] = float(-np.mean(np.log(p[np.arange(len(y_true)), index])))
    return _finite(out)


def _f1(truth: np.ndarray, guess: np.ndarray) -> float:
    tp = float(np.sum(truth & guess))
    denom = tp + 0.5 * (float(np.sum(~truth & guess)) + float(np.sum(truth & ~guess)))
    return tp / denom if denom else 0.0


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count half)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(score, dtype=float))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average (scipy's rankdata, without importing scipy.stats: two
    seconds in every fresh worker)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return np.asarray((ends - (counts - 1) / 2.0)[inverse], dtype=float)


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
