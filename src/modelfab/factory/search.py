"""Hyperparameter search over a recipe's candidates: seeded optuna TPE on an inner validation split."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from modelfab.factory.evaluate import score_all
from modelfab.factory.trainers.sklearn import build_pipeline
from modelfab.recipe import LOWER_IS_BETTER, Candidate, Recipe, SearchRange

__all__ = ["Choice", "default_choice", "predict", "search", "split_indices", "take"]


@dataclass(frozen=True)
class Choice:
    family: str
    params: dict[str, Any]
    trials: int
    best_validation: float | None


def _midpoint(r: SearchRange) -> Any:
    if r.choices is not None:
        return r.choices[0]
    assert r.low is not None and r.high is not None
    mid = math.sqrt(r.low * r.high) if r.log else (r.low + r.high) / 2
    return round(mid) if r.is_int else mid


def default_choice(cand: Candidate) -> Choice:
    """With a single trial there is nothing to compare: the first candidate at the middle of each range."""
    params = {**cand.params, **{k: _midpoint(r) for k, r in cand.search.items()}}
    return Choice(cand.family, params, trials=1, best_validation=None)


def predict(pipeline: Any, frame: Any, task: str) -> tuple[Any, Any | None]:
    """(predictions, probabilities) with one pass through the pipeline."""
    if task != "classification":
        return pipeline.predict(frame), None
    proba = pipeline.predict_proba(frame)
    return pipeline.classes_[np.argmax(proba, axis=1)], proba


# (family, params, fit rows, fit targets, validation rows) -> (predictions, probabilities)
FitPredict = Callable[[str, dict[str, Any], Any, Any, Any], tuple[Any, Any | None]]


def search(
    recipe: Recipe,
    train: Any,
    y: Any,
    numeric: list[str],
    categorical: list[str],
    seed: int,
    fit_predict: FitPredict | None = None,
) -> Choice:
    """The best candidate and params on an inner validation split; ``fit_predict`` trains one trial
    (scikit-learn pipelines when None; the torch trainer passes its own)."""
    if recipe.trials == 1:
        return default_choice(recipe.candidates[0])
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fit_idx, val_idx = split_indices(y, 0.25, seed, stratify=recipe.classifies)
    fit_x, val_x, fit_y, val_y = take(train, fit_idx), take(train, val_idx), y[fit_idx], y[val_idx]
    classes = np.unique(fit_y) if recipe.classifies else None

    def sklearn_fit_predict(family: str, params: dict[str, Any], fx: Any, fy: Any, vx: Any) -> Any:
        model = build_pipeline(family, recipe.task, params, numeric, categorical, seed)
        model.fit(fx, fy)
        return predict(model, vx, recipe.task)

    trial_fit = fit_predict or sklearn_fit_predict

    def objective(trial: Any) -> float:
        idx = trial.suggest_categorical("candidate", list(range(len(recipe.candidates))))
        cand = recipe.candidates[idx]
        params = dict(cand.params)
        for key, r in cand.search.items():
            params[key] = _suggest(trial, f"{cand.family}.{key}", r)
        pred, proba = trial_fit(cand.family, params, fit_x, fit_y, val_x)
        scores = score_all(recipe.task, np.asarray(val_y), pred, proba, classes)
        value = scores.get(recipe.metric)
        if value is None:
            return math.inf if recipe.metric in LOWER_IS_BETTER else -math.inf
        trial.set_user_attr("params", params)
        return value

    direction: Literal["minimize", "maximize"] = (
        "minimize" if recipe.metric in LOWER_IS_BETTER else "maximize"
    )
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=recipe.trials, catch=(ValueError,))
    done = [t for t in study.trials if t.value is not None and math.isfinite(t.value)]
    if not done:
        return default_choice(recipe.candidates[0])
    best = study.best_trial
    cand = recipe.candidates[best.params["candidate"]]
    return Choice(
        cand.family, best.user_attrs["params"], trials=len(study.trials), best_validation=best.value
    )


def _suggest(trial: Any, name: str, r: SearchRange) -> Any:
    if r.choices is not None:
        return r.choices[trial.suggest_categorical(name, list(range(len(r.choices))))]
    assert r.low is not None and r.high is not None
    if r.is_int:
        return trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
    return trial.suggest_float(name, float(r.low), float(r.high), log=r.log)


def take(rows: Any, index: np.ndarray) -> Any:
    """Rows of a float matrix or a DataFrame by position."""
    return rows[index] if isinstance(rows, np.ndarray) else rows.iloc[index]


def split_indices(y: Any, share: float, seed: int, stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, holdout) row positions; per class when ``stratify``, so every class with two or
    more rows lands on both sides."""
    rng = np.random.default_rng(seed)
    n = len(y)
    if not stratify:
        order = rng.permutation(n)
        cut = max(1, min(n - 1, round(n * share)))
        return np.sort(order[cut:]), np.sort(order[:cut])
    hold: list[np.ndarray] = []
    keep: list[np.ndarray] = []
    for cls in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == cls))
        cut = min(max(round(len(rows) * share), 1), len(rows) - 1) if len(rows) >= 2 else 0
        hold.append(rows[:cut])
        keep.append(rows[cut:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(hold))
