"""A trial whose labels stop coming ends after ``canary.timeout``: the champion stays, the challenger goes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelfab.data import import_dataset
from modelfab.errors import RecipeError
from modelfab.factory import produce
from modelfab.iterate.decisions import CHALLENGER, DecisionLog
from modelfab.iterate.loop import IterationLoop
from modelfab.store import Workspace
from tests.iterate.conftest import Traffic, make_recipe, site_frame

NAME = "churn.site-002"


@pytest.mark.parametrize("mode", ["canary", "shadow"])
def test_a_trial_without_labels_is_rolled_back_at_its_timeout(
    produced: Workspace, traffic: Traffic, tmp_path: Path, mode: str
) -> None:
    ws = produced
    recipe = make_recipe(**{"min_labels: 60}": "min_labels: 60, timeout: 2h}"})
    assert recipe.iterate is not None and recipe.iterate.canary.timeout == "2h"
    site_frame(shift={"site-002": -1.0}).to_csv(tmp_path / "newer.csv", index=False)
    newer, _ = import_dataset(ws, "churn", tmp_path / "newer.csv")
    produce(ws, recipe, dataset=newer, only=["site-002"], alias=CHALLENGER, workers=1)
    log = DecisionLog(ws.registry)
    log.start_trial(NAME, mode, 2, 1, 0.5, "trial for the test", {})
    traffic.send(site_frame(), per_site=200, seed=7, label=False)  # served, never labelled
    now = [time.time() + 3600]
    loop = IterationLoop(ws, [(recipe, "<test>")], workers=1, clock=lambda: now[0])
    assert loop.run_once().actions == []  # an hour in: still waiting for labels
    assert set(log.deployments()) == {NAME}
    now[0] = time.time() + 2 * 3600 + 60
    report = loop.run_once()
    assert [(m, a) for m, a, _ in report.actions] == [(NAME, "rollback")]
    assert report.actions[0][2].startswith("timeout after 2h: 0/60 labelled challenger")
    assert ws.registry.resolve(NAME) == 1
    assert log.deployments() == {}
    assert CHALLENGER not in ws.registry.get_version(NAME, 2).aliases
    last = log.history(NAME)[-1]
    assert (last.action, last.champion, last.challenger, last.evidence["mode"]) == ("rollback", 1, 2, mode)
    assert last.trigger == "timeout" and last.evidence["timeout_s"] == 7200
    assert last.evidence["elapsed_s"] >= 7200
    assert loop.run_once().actions == []  # the trial is over; nothing else to do


@pytest.mark.parametrize("bad", ["0s", "soon", "-1h"])
def test_canary_timeout_must_be_a_positive_duration(bad: str) -> None:
    with pytest.raises(RecipeError, match=r"canary\.timeout.*positive duration"):
        make_recipe(**{"min_labels: 60}": f"min_labels: 60, timeout: {bad}}}"})
