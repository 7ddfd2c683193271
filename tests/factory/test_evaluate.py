"""The numpy metrics and split agree with scikit-learn; gates decide as documented."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as m

from modelfab.factory.evaluate import apply_gate, better, score_all
from modelfab.factory.search import split_indices
from modelfab.recipe import Gate


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1).round(2)  # ties on purpose
    proba = np.column_stack([1 - p1, p1])
    pred = (p1 > 0.5).astype(int)
    got = score_all("classification", y, pred, proba, np.array([0, 1]))
    assert got["accuracy"] == pytest.approx(m.accuracy_score(y, pred))
    assert got["f1"] == pytest.approx(m.f1_score(y, pred))
    assert got["roc_auc"] == pytest.approx(m.roc_auc_score(y, p1))
    assert got["log_loss"] == pytest.approx(m.log_loss(y, proba))


def test_multiclass_and_string_labels_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    classes = np.array(["a", "b", "c"])
    y = classes[rng.integers(0, 3, 400)]
    raw = rng.random((400, 3)) + (y[:, None] == classes[None, :]) * 0.5
    proba = raw / raw.sum(axis=1, keepdims=True)
    pred = classes[proba.argmax(axis=1)]
    got = score_all("classification", y, pred, proba, classes)
    assert got["f1"] == pytest.approx(m.f1_score(y, pred, average="macro"))
    assert got["roc_auc"] == pytest.approx(m.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    assert got["log_loss"] == pytest.approx(m.log_loss(y, proba, labels=classes))


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(4)
    y = rng.normal(size=200)
    pred = y + rng.normal(scale=0.3, size=200)
    got = score_all("regression", y, pred, None, None)
    assert got["rmse"] == pytest.approx(np.sqrt(m.mean_squared_error(y, pred)))
    assert got["mae"] == pytest.approx(m.mean_absolute_error(y, pred))
    assert got["r2"] == pytest.approx(m.r2_score(y, pred))


def test_auc_is_left_out_when_one_class_is_present() -> None:
    got = score_all("classification", np.zeros(10), np.zeros(10), np.full((10, 2), 0.5), np.array([0, 1]))
    assert "roc_auc" not in got and "log_loss" not in got and got["accuracy"] == 1.0


def test_split_is_seeded_stratified_and_disjoint() -> None:
    y = np.array([0] * 90 + [1] * 10)
    train, hold = split_indices(y, 0.2, seed=7, stratify=True)
    assert len(set(train) & set(hold)) == 0 and len(train) + len(hold) == 100
    assert (y[hold] == 1).sum() == 2 and (y[hold] == 0).sum() == 18
    again = split_indices(y, 0.2, seed=7, stratify=True)
    assert np.array_equal(train, again[0]) and np.array_equal(hold, again[1])
    lonely = np.array([0] * 20 + [1])
    _, hold = split_indices(lonely, 0.25, seed=1, stratify=True)
    assert 20 not in hold  # a class with one row stays in training


@pytest.mark.parametrize(
    ("metric", "score", "gate", "champion", "passed"),
    [
        ("roc_auc", 0.7, Gate(min=0.6), None, True),
        ("roc_auc", 0.5, Gate(min=0.6), None, False),
        ("rmse", 2.0, Gate(max=1.5), None, False),
        ("rmse", 1.0, Gate(max=1.5, beat_champion_by=0.1), 1.05, False),
        ("rmse", 0.9, Gate(max=1.5, beat_champion_by=0.1), 1.05, True),
        ("roc_auc", 0.8, Gate(beat_champion_by=0.01), 0.795, False),
        ("roc_auc", None, Gate(), None, False),
    ],
)
def test_gate(metric: str, score: float | None, gate: Gate, champion: float | None, passed: bool) -> None:
    assert apply_gate(metric, score, gate, champion)[0] is passed
    assert better("log_loss", 0.3, 0.5) and not better("accuracy", 0.3, 0.5)
