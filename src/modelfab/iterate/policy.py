"""The loop's decisions as pure functions of numbers: triggers, the challenger gate, the canary verdict.

Nothing here reads a database or a clock; the loop gathers the evidence and records what these return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelfab.factory.evaluate import better
from modelfab.recipe import LOWER_IS_BETTER, IterateSpec
from modelfab.units import parse_duration

__all__ = [
    "ACTIONS",
    "Verdict",
    "WatchEvidence",
    "backoff_passes",
    "canary_verdict",
    "fired_trigger",
    "gate_verdict",
    "watch_verdict",
]

ACTIONS = ("retrain", "reject", "canary", "promote", "rollback", "hold")


@dataclass(frozen=True)
class Verdict:
    """``action`` is one of :data:`ACTIONS`, or ``none`` (nothing to do, nothing to record) or ``wait``
    (a trial is still collecting evidence)."""

    action: str
    reason: str
    trigger: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WatchEvidence:
    """What the monitor measured for a champion over its recent window."""

    metric: str
    holdout: float | None  # the version's holdout score from training
    online: float | None  # the same metric on the recent labelled window
    labelled: int  # labelled rows in that window
    rows: int  # rows (labelled or not) in the drift window
    max_psi: float | None
    worst_feature: str | None
    new_labels: int  # labels since the model's last retrain


def fired_trigger(spec: IterateSpec, ev: WatchEvidence) -> tuple[str, str] | None:
    """The first trigger that fires, as (name, why), or None. Judgements need ``min_samples`` rows."""
    tr = spec.triggers
    enough_rows = ev.rows >= spec.min_samples
    if tr.drift_psi is not None and enough_rows and ev.max_psi is not None and ev.max_psi > tr.drift_psi:
        return "drift_psi", f"PSI of {ev.worst_feature} is {ev.max_psi:.3f} > {tr.drift_psi}"
    enough_labels = ev.labelled >= spec.min_samples
    if tr.metric_drop is not None and enough_labels and ev.online is not None and ev.holdout is not None:
        drop = ev.online - ev.holdout if ev.metric in LOWER_IS_BETTER else ev.holdout - ev.online
        if drop > tr.metric_drop:
            return (
                "metric_drop",
                f"online {ev.metric} {ev.online:.4f} is {drop:.4f} worse than the holdout {ev.holdout:.4f} "
                f"(allowed {tr.metric_drop})",
            )
    if tr.new_labels is not None and ev.new_labels >= tr.new_labels:
        return "new_labels", f"{ev.new_labels} new labels since the last retrain (>= {tr.new_labels})"
    return None


def watch_verdict(
    spec: IterateSpec, ev: WatchEvidence, since_last_action_s: float | None, cooldown_s: float
) -> Verdict:
    """Retrain when a trigger fires, unless the cooldown since the last action has not passed."""
    fired = fired_trigger(spec, ev)
    if fired is None:
        return Verdict("none", "no trigger fired")
    trigger, why = fired
    if since_last_action_s is not None and since_last_action_s < cooldown_s:
        return Verdict(
            "hold",
            f"{why}; cooling down ({since_last_action_s:.0f}s of {cooldown_s:.0f}s since the last action)",
            trigger,
        )
    return Verdict("retrain", why, trigger)


def gate_verdict(
    spec: IterateSpec, metric: str, challenger: float | None, champion: float | None, samples: int
) -> Verdict:
    """A challenger goes to trial (``canary``; a shadow trial when the recipe says ``shadow``) only if it
    beats the champion on the same labelled rows by the margin."""
    ev = {"metric": metric, "challenger": challenger, "champion": champion, "samples": samples}
    if samples < spec.min_samples:
        return Verdict(
            "hold", f"{samples} labelled rows to judge on, min_samples is {spec.min_samples}", None, ev
        )
    if challenger is None or champion is None:
        return Verdict("reject", f"{metric} cannot be computed on the judging window", None, ev)
    margin = spec.beat_champion_by
    if better(metric, challenger, champion, margin):
        return Verdict(
            "canary",
            f"challenger {metric} {challenger:.4f} beats the champion's {champion:.4f} by >= {margin} "
            f"on {samples} rows",
            None,
            ev,
        )
    return Verdict(
        "reject",
        f"challenger {metric} {challenger:.4f} does not beat the champion's {champion:.4f} by {margin} "
        f"on {samples} rows",
        None,
        ev,
    )


def canary_verdict(
    spec: IterateSpec,
    metric: str,
    challenger: float | None,
    challenger_n: int,
    champion: float | None,
    champion_n: int,
    elapsed_s: float = 0.0,
) -> Verdict:
    """After ``canary.min_labels`` labelled trial predictions: promote a challenger at least as good as
    the champion over the same period, roll back a worse one. A trial that has run ``canary.timeout``
    (``elapsed_s``) without them ends with a rollback: the champion stays."""
    ev = {
        "metric": metric,
        "challenger": challenger,
        "challenger_labels": challenger_n,
        "champion": champion,
        "champion_labels": champion_n,
    }
    need = spec.canary.min_labels
    if challenger_n < need or champion_n < need:
        timeout = parse_duration(spec.canary.timeout)
        if elapsed_s >= timeout:
            return Verdict(
                "rollback",
                f"timeout after {spec.canary.timeout}: {challenger_n}/{need} labelled challenger and "
                f"{champion_n}/{need} champion predictions; the champion stays",
                "timeout",
                {**ev, "elapsed_s": round(elapsed_s, 3), "timeout_s": timeout},
            )
        return Verdict("wait", f"{challenger_n}/{need} labelled trial predictions", None, ev)
    if challenger is None:
        return Verdict(
            "rollback", f"{metric} of the challenger cannot be computed on its trial rows", None, ev
        )
    if champion is None or better(metric, challenger, champion):
        vs = f"{champion:.4f}" if champion is not None else "n/a"
        return Verdict(
            "promote",
            f"online {metric} {challenger:.4f} vs champion {vs} over {challenger_n} trial labels",
            None,
            ev,
        )
    return Verdict(
        "rollback",
        f"online {metric} {challenger:.4f} is worse than the champion's {champion:.4f} "
        f"over {challenger_n} trial labels",
        None,
        ev,
    )


def backoff_passes(failures: int, cap: int = 32) -> int:
    """Passes a model sits out after its ``failures``-th failure in a row: 1, 2, 4 ... up to ``cap``."""
    return int(min(2 ** max(failures - 1, 0), cap))
