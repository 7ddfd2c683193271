"""One loop acts at a time: leadership through PostgreSQL advisory locks (file locks on SQLite)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from modelfab.data import import_dataset
from modelfab.factory import produce
from modelfab.iterate.decisions import DecisionLog
from modelfab.iterate.leader import Leadership, current_leaders
from modelfab.settings import Settings
from modelfab.store import Workspace
from tests.iterate.conftest import RECIPE, SITES, Traffic, make_recipe, site_frame
from tests.scale.conftest import MODELFAB, ROOT, env_for

SHIFTED = "churn.site-001"


def test_one_holder_per_recipe_until_it_lets_go(any_ws: Workspace, tmp_path: Path) -> None:
    a = Leadership(any_ws.engine, "default", tmp_path)
    b = Leadership(any_ws.engine, "default", tmp_path)
    assert a.hold("churn") and a.hold("churn")  # holding again is a check, not a second lock
    assert not b.hold("churn")
    assert b.hold("other")  # leadership is per recipe
    assert Leadership(any_ws.engine, "tenant-2", tmp_path).hold("churn")  # and per tenant
    assert current_leaders(any_ws.engine, "default") == {"churn": a.holder, "other": b.holder}
    a.release()
    assert b.hold("churn") and b.held == {"churn", "other"}
    assert not a.hold("churn")
    b.release()


def _wait(what: str, predicate: object, procs: list[subprocess.Popen[bytes]], limit: float = 150) -> None:
    deadline = time.monotonic() + limit
    while not predicate():  # type: ignore[operator]
        for p in procs:
            assert p.poll() is None, f"a loop exited early: {p.communicate()[1].decode()[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _loop(settings: Settings, recipe: Path) -> subprocess.Popen[bytes]:
    cmd = [*MODELFAB, "iterate", "--recipe", str(recipe), "--interval", "0.3", "--workers", "1"]
    return subprocess.Popen(
        cmd, env=env_for(settings), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_two_loop_processes_on_postgresql_only_one_acts_and_the_other_takes_over(
    pg_settings: Settings, tmp_path: Path
) -> None:
    ws = Workspace.open(pg_settings)
    site_frame().to_csv(tmp_path / "churn.csv", index=False)
    import_dataset(ws, "churn", tmp_path / "churn.csv")
    assert produce(ws, make_recipe(), workers=1).passed == SITES
    recipe_file = tmp_path / "churn.yaml"
    recipe_file.write_text(RECIPE.replace("COOLDOWN", "0s"))
    traffic = Traffic(ws)
    log = DecisionLog(ws.registry)
    shifted = site_frame(shift={"site-001": -3.0})
    traffic.send(shifted, per_site=600, seed=1)  # feedback ingested on PostgreSQL

    loops = [_loop(pg_settings, recipe_file), _loop(pg_settings, recipe_file)]
    try:
        _wait("a canary", lambda: "canary" in [d.action for d in log.history(SHIFTED)], loops)
        leader_pid = int(current_leaders(ws.engine, "default")["churn"].rpartition(":")[2])
        leader = next(p for p in loops if p.pid == leader_pid)
        standby = next(p for p in loops if p is not leader)
        leader.send_signal(signal.SIGKILL)
        leader.wait(30)
        traffic.send(shifted, per_site=300, seed=2)  # enough labels for the canary to be judged
        _wait("a promotion", lambda: ws.registry.resolve(SHIFTED) == 2, [standby])
        assert current_leaders(ws.engine, "default")["churn"].endswith(f":{standby.pid}")
    finally:
        for p in loops:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in loops:
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
    traffic.close()
    # One retrain, one canary, one promotion: the standby never acted while the leader lived, and the
    # leader's death handed the promotion over instead of losing or doubling it.
    assert [d.action for d in log.history(SHIFTED)] == ["retrain", "canary", "promote"]
    for stable in ("churn.site-000", "churn.site-002"):
        assert log.history(stable) == []
    moves = ws.registry.alias_history(SHIFTED, "champion")
    assert [(m.version, m.previous) for m in moves] == [(1, None), (2, 1)]
    ws.close()
