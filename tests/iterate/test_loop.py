"""The closed loop on real models: drifted sites are retrained, trialled and promoted; others left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from modelfab.data import import_dataset
from modelfab.factory import produce
from modelfab.iterate.decisions import DecisionLog
from modelfab.iterate.loop import IterationLoop
from modelfab.recipe import Gate
from modelfab.store import Workspace
from tests.iterate.conftest import Traffic, make_recipe, site_frame

ROOT = Path(__file__).resolve().parents[2]
SHIFTED = "site-001"


def actions(ws: Workspace, name: str) -> list[str]:
    return [d.action for d in DecisionLog(ws.registry).history(name)]


def test_a_changed_site_is_retrained_and_promoted_while_stable_sites_are_left_alone(
    produced: Workspace, traffic: Traffic
) -> None:
    ws = produced
    loop = IterationLoop(ws, [(make_recipe(), "<test>")], workers=1)
    shifted = site_frame(shift={SHIFTED: -3.0})
    traffic.send(shifted, per_site=600, seed=1)
    first = loop.run_once()
    assert [(m, a) for m, a, _ in first.actions] == [
        (f"churn.{SHIFTED}", "retrain"),
        (f"churn.{SHIFTED}", "canary"),
    ]
    traffic.send(shifted, per_site=300, seed=2)
    assert traffic.served[(f"churn.{SHIFTED}", 2)] > 60  # the canary got its share
    second = loop.run_once()
    assert [(m, a) for m, a, _ in second.actions] == [(f"churn.{SHIFTED}", "promote")]
    assert ws.registry.resolve(f"churn.{SHIFTED}") == 2
    assert actions(ws, f"churn.{SHIFTED}") == ["retrain", "canary", "promote"]
    for stable in ("site-000", "site-002"):
        assert actions(ws, f"churn.{stable}") == []
        assert ws.registry.resolve(f"churn.{stable}") == 1
    history = DecisionLog(ws.registry).history(f"churn.{SHIFTED}")
    assert (
        history[0].trigger == "metric_drop" and history[0].evidence["online"] < history[0].evidence["holdout"]
    )
    assert history[-1].version == 2 and history[-1].actor == "loop"
    assert loop.run_once().actions == []  # promoted: nothing left to do


def test_a_challenger_that_does_not_beat_the_champion_is_rejected_and_cooldown_stops_flapping(
    produced: Workspace, traffic: Traffic
) -> None:
    ws = produced
    # new_labels fires for every site; an unchanged world cannot beat the champion by 0.3.
    recipe = make_recipe(
        "1h",
        **{
            "metric_drop: 0.06}": "metric_drop: 0.06, new_labels: 300}",
            "beat_champion_by: 0.01": "beat_champion_by: 0.3",
        },
    )
    loop = IterationLoop(ws, [(recipe, "<test>")], workers=1)
    traffic.send(site_frame(), per_site=600, seed=5)
    first = loop.run_once()
    assert sorted(a for _, a, _ in first.actions) == ["reject"] * 3 + ["retrain"] * 3
    rejected = next(d for d in DecisionLog(ws.registry).history("churn.site-000") if d.action == "reject")
    assert rejected.evidence["samples"] >= 100 and "does not beat" in rejected.reason
    assert "challenger" not in ws.registry.get_version("churn.site-000", rejected.version).aliases
    traffic.send(site_frame(), per_site=400, seed=6)
    second = loop.run_once()  # the trigger still fires, but the cooldown holds it
    assert sorted(a for _, a, _ in second.actions) == ["hold"] * 3
    assert all("cooling down" in r for _, _, r in second.actions)
    assert loop.run_once().actions == []  # one hold line, not one per pass
    assert actions(ws, "churn.site-000") == ["retrain", "reject", "hold"]
    assert all(ws.registry.resolve(f"churn.site-00{i}") == 1 for i in range(3))


def test_a_worse_canary_is_rolled_back(produced: Workspace, traffic: Traffic, tmp_path: Path) -> None:
    ws = produced
    # A version trained on inverted labels: it ranks customers backwards.
    flipped = site_frame()
    flipped["churned"] = 1 - flipped["churned"]
    flipped.to_csv(tmp_path / "flipped.csv", index=False)
    bad_data, _ = import_dataset(ws, "churn", tmp_path / "flipped.csv")
    recipe = make_recipe()
    produce(
        ws,
        recipe.model_copy(update={"gate": Gate()}),
        dataset=bad_data,
        only=["site-002"],
        alias="challenger",
        workers=1,
    )
    log = DecisionLog(ws.registry)
    log.start_trial("churn.site-002", "canary", 2, 1, 0.5, "manual trial for the test", {})
    traffic.send(site_frame(), per_site=400, seed=7)
    assert traffic.served[("churn.site-002", 2)] >= 60
    report = IterationLoop(ws, [(recipe, "<test>")], workers=1).run_once()
    assert [(m, a) for m, a, _ in report.actions] == [("churn.site-002", "rollback")]
    assert ws.registry.resolve("churn.site-002") == 1
    assert log.deployments() == {}
    last = log.history("churn.site-002")[-1]
    assert last.evidence["challenger"] < last.evidence["champion"]


PROMOTE_AND_DIE = """
import os, sys, time
from modelfab.iterate import decisions
from modelfab.iterate.loop import IterationLoop
from modelfab.settings import Settings
from modelfab.store import Workspace
from tests.iterate.conftest import make_recipe

original = decisions.DecisionLog.record

def record_then_hang(self, name, action, *args, **kwargs):
    original(self, name, action, *args, **kwargs)
    if action == "promote":  # inside the promotion's transaction, after every statement of it
        open(sys.argv[1], "w").close()
        time.sleep(600)

decisions.DecisionLog.record = record_then_hang
IterationLoop(Workspace.open(Settings()), [(make_recipe(), "<test>")], workers=1).run_once()
"""


def test_sigkill_mid_promotion_leaves_one_champion_and_a_consistent_history(
    produced: Workspace, traffic: Traffic, tmp_path: Path
) -> None:
    ws = produced
    loop = IterationLoop(ws, [(make_recipe(), "<test>")], workers=1)
    shifted = site_frame(shift={SHIFTED: -3.0})
    traffic.send(shifted, per_site=600, seed=1)
    loop.run_once()
    traffic.send(shifted, per_site=300, seed=2)
    name = f"churn.{SHIFTED}"
    marker = tmp_path / "promoting"
    env = {**os.environ, "MODELFAB_HOME": str(ws.settings.home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", PROMOTE_AND_DIE, str(marker)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the loop never reached the promotion"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    # The killed promotion left nothing behind: still one champion (the old one), trial still running.
    assert ws.registry.resolve(name) == 1
    assert actions(ws, name) == ["retrain", "canary"]
    assert set(DecisionLog(ws.registry).deployments()) == {name}
    # A restarted loop finishes the job.
    report = IterationLoop(ws, [(make_recipe(), "<test>")], workers=1).run_once()
    assert [(m, a) for m, a, _ in report.actions] == [(name, "promote")]
    assert actions(ws, name) == ["retrain", "canary", "promote"]
    moves = ws.registry.alias_history(name, "champion")
    assert [(m.version, m.previous) for m in moves] == [(1, None), (2, 1)]
    champions = [
        v for v in ws.registry.list_versions(all_versions=True) if v.name == name and "champion" in v.aliases
    ]
    assert [v.version for v in champions] == [2]
