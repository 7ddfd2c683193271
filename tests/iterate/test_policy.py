"""Policy maths as tables of numbers: triggers, cooldown, the challenger gate, the canary verdict."""

from __future__ import annotations

import pytest

from modelfab.iterate.policy import (
    WatchEvidence,
    backoff_passes,
    canary_verdict,
    gate_verdict,
    watch_verdict,
)
from modelfab.recipe import IterateSpec
from modelfab.units import parse_duration

SPEC = IterateSpec.model_validate(
    {
        "triggers": {"drift_psi": 0.25, "metric_drop": 0.05, "new_labels": 5000},
        "min_samples": 200,
        "beat_champion_by": 0.01,
        "canary": {"share": 0.2, "min_labels": 100},
    }
)


def ev(
    online: float | None = 0.80,
    labelled: int = 500,
    rows: int = 500,
    psi: float | None = 0.05,
    new_labels: int = 0,
    metric: str = "roc_auc",
    holdout: float = 0.80,
) -> WatchEvidence:
    return WatchEvidence(metric, holdout, online, labelled, rows, psi, "tenure", new_labels)


@pytest.mark.parametrize(
    ("evidence", "action", "trigger"),
    [
        (ev(), "none", None),
        (ev(psi=0.26), "retrain", "drift_psi"),
        (ev(psi=0.25), "none", None),  # at the threshold is not above it
        (ev(psi=0.9, rows=199), "none", None),  # too few rows to judge drift
        (ev(online=0.74), "retrain", "metric_drop"),
        (ev(online=0.76), "none", None),
        (ev(online=0.60, labelled=199), "none", None),  # too few labels to judge the metric
        (ev(online=None), "none", None),
        (ev(new_labels=5000), "retrain", "new_labels"),
        (ev(metric="rmse", holdout=1.0, online=1.06), "retrain", "metric_drop"),  # lower is better
        (ev(metric="rmse", holdout=1.0, online=0.90), "none", None),
        (ev(psi=0.3, online=0.5), "retrain", "drift_psi"),  # drift is named first
    ],
)
def test_watch_triggers(evidence: WatchEvidence, action: str, trigger: str | None) -> None:
    verdict = watch_verdict(SPEC, evidence, since_last_action_s=None, cooldown_s=0.0)
    assert (verdict.action, verdict.trigger) == (action, trigger)


@pytest.mark.parametrize(
    ("since", "cooldown", "action"),
    [
        (None, 3600.0, "retrain"),
        (10.0, 3600.0, "hold"),
        (3599.0, 3600.0, "hold"),
        (3600.0, 3600.0, "retrain"),
        (0.0, 0.0, "retrain"),
    ],
)
def test_cooldown_holds_a_fired_trigger(since: float | None, cooldown: float, action: str) -> None:
    verdict = watch_verdict(SPEC, ev(psi=0.5), since, cooldown)
    assert verdict.action == action
    if action == "hold":
        assert "cooling down" in verdict.reason and verdict.trigger == "drift_psi"


@pytest.mark.parametrize(
    ("metric", "challenger", "champion", "samples", "action"),
    [
        ("roc_auc", 0.80, 0.70, 300, "canary"),
        ("roc_auc", 0.71, 0.70, 300, "canary"),  # exactly the margin
        ("roc_auc", 0.705, 0.70, 300, "reject"),
        ("roc_auc", 0.60, 0.70, 300, "reject"),
        ("roc_auc", 0.90, 0.70, 199, "hold"),
        ("roc_auc", None, 0.70, 300, "reject"),
        ("log_loss", 0.30, 0.40, 300, "canary"),
        ("log_loss", 0.395, 0.40, 300, "reject"),
    ],
)
def test_gate(metric: str, challenger: float | None, champion: float, samples: int, action: str) -> None:
    verdict = gate_verdict(SPEC, metric, challenger, champion, samples)
    assert verdict.action == action
    assert verdict.evidence["samples"] == samples


@pytest.mark.parametrize(
    ("challenger", "ch_n", "champion", "champ_n", "action"),
    [
        (0.80, 100, 0.70, 400, "promote"),
        (0.70, 100, 0.70, 400, "promote"),  # as good is good enough after the gate
        (0.69, 100, 0.70, 400, "rollback"),
        (0.90, 99, 0.70, 400, "wait"),
        (0.90, 100, 0.70, 99, "wait"),
        (None, 100, 0.70, 400, "rollback"),
    ],
)
def test_canary(challenger: float | None, ch_n: int, champion: float, champ_n: int, action: str) -> None:
    assert canary_verdict(SPEC, "roc_auc", challenger, ch_n, champion, champ_n).action == action


def test_durations() -> None:
    assert [parse_duration(s) for s in ("0s", "90s", "15m", "2h", "1d", "250ms")] == [
        0.0,
        90.0,
        900.0,
        7200.0,
        86400.0,
        0.25,
    ]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("ch_n", "champ_n", "elapsed", "action"),
    [
        (0, 0, 7 * 86400 - 1, "wait"),
        (0, 0, 7 * 86400, "rollback"),  # the default timeout is 7d
        (99, 400, 30 * 86400, "rollback"),  # short of min_labels on one side is short
        (100, 400, 30 * 86400, "promote"),  # enough labels: judged on them, however late
    ],
)
def test_canary_timeout(ch_n: int, champ_n: int, elapsed: float, action: str) -> None:
    verdict = canary_verdict(SPEC, "roc_auc", 0.80, ch_n, 0.70, champ_n, elapsed)
    assert verdict.action == action
    if action == "rollback":
        assert verdict.reason.startswith("timeout after 7d") and verdict.trigger == "timeout"


def test_backoff_passes() -> None:
    assert [backoff_passes(n, cap=8) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
