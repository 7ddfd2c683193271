"""What a trainer of any framework hands the job for one partition (scikit-learn in job.py, torch in
torch_job.py), and the per-row signal the drift monitor follows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fitted", "prediction_signal"]


@dataclass
class Fitted:
    """What a trainer hands back for one partition: the graph, its scores and what to record."""

    family: str
    params: dict[str, Any]
    trials: int
    best_validation: float | None
    metrics: dict[str, float]
    onnx_bytes: bytes
    signature: dict[str, Any]
    profile: dict[str, Any]
    rows_train: int
    rows_holdout: int
    lineage: dict[str, Any] = field(default_factory=dict)


def prediction_signal(pred: Any, proba: Any | None) -> Any:
    """The one number per row the drift monitor follows: P(positive), else the top probability, else
    the prediction."""
    if proba is not None and proba.shape[1] == 2:
        return proba[:, 1]
    return proba.max(axis=1) if proba is not None else pred
