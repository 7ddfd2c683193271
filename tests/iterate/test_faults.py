"""One model failing never stops the others: its failure is recorded, it backs off, then it is retried."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

import modelfab.factory
from modelfab.cli import iterate as commands
from modelfab.iterate.decisions import DecisionLog
from modelfab.iterate.faults import Backoff, describe
from modelfab.iterate.loop import IterationLoop
from modelfab.store import Workspace
from tests.cli.test_cli import run
from tests.iterate.conftest import Traffic, make_recipe, site_frame

BROKEN = "churn.site-000"
PROMOTED = "churn.site-001"
SECRET = "postgresql+psycopg://loop:hunter2@db.internal:5432/prod"


def test_a_failing_retrain_is_recorded_and_backed_off_while_another_model_is_promoted(
    produced: Workspace,
    traffic: Traffic,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ws = produced
    loop = IterationLoop(ws, [(make_recipe(), "<test>")], workers=1)
    first_shift = site_frame(shift={"site-001": -3.0})
    traffic.send(first_shift, per_site=600, seed=1)
    assert [(m, a) for m, a, _ in loop.run_once().actions] == [(PROMOTED, "retrain"), (PROMOTED, "canary")]

    # site-001's canary collects its labels while site-000 and site-002 change; site-000's retraining
    # breaks (a production run that raises, its message carrying a database URL with a password).
    real_produce = modelfab.factory.produce

    def produce(*args: Any, **kwargs: Any) -> Any:
        if "site-000" in kwargs.get("only", []):
            raise RuntimeError(f"could not reach {SECRET}\nTraceback (most recent call last): ...")
        return real_produce(*args, **kwargs)

    monkeypatch.setattr(modelfab.factory, "produce", produce)
    traffic.send(first_shift[first_shift.site == "site-001"], per_site=300, seed=2)
    changed = site_frame(shift={"site-000": -3.0, "site-002": -3.0})
    traffic.send(changed[changed.site != "site-001"], per_site=1200, seed=3)
    second = loop.run_once()
    acts = [(m, a) for m, a, _ in second.actions]
    assert (PROMOTED, "promote") in acts and ws.registry.resolve(PROMOTED) == 2
    assert ("churn.site-002", "retrain") in acts  # tried alone once the pair failed together
    assert [a for m, a in acts if m == BROKEN] == ["error"]
    error = DecisionLog(ws.registry).history(BROKEN)[-1]
    assert error.action == "error" and error.reason.startswith(
        "retrain failed: RuntimeError: could not reach"
    )
    assert "retrying after 1 pass (failure 1 in a row)" in error.reason
    assert "hunter2" not in error.reason and "Traceback" not in error.reason
    assert error.evidence == {
        "step": "retrain",
        "error": "RuntimeError",
        "failures": 1,
        "retry_after_passes": 1,
    }
    assert ws.registry.resolve(BROKEN) == 1

    # Back-off: it sits out one pass, fails again, sits out two, then (fixed) retrains.
    backing_off = []
    for _ in range(3):
        report = loop.run_once()
        backing_off.append(report.backing_off)
        if BROKEN in report.backing_off:
            assert all(m != BROKEN for m, _, _ in report.actions)
    assert backing_off[0] == [BROKEN] and backing_off[1] == [] and backing_off[2] == [BROKEN]
    assert DecisionLog(ws.registry).history(BROKEN)[-1].evidence["failures"] == 2
    monkeypatch.setattr(modelfab.factory, "produce", real_produce)
    waiting = loop.run_once()
    assert waiting.backing_off == [BROKEN]
    capsys.readouterr()
    commands._print_pass(waiting)  # what `modelfab iterate` prints after each pass
    assert f"backing off after failures (see modelfab history): {BROKEN}" in capsys.readouterr().out
    retried = loop.run_once()
    assert retried.backing_off == [] and (BROKEN, "retrain") in [(m, a) for m, a, _ in retried.actions]
    assert [d.action for d in DecisionLog(ws.registry).history(BROKEN)][:3] == ["error", "error", "retrain"]

    # The history command shows the failures as they were recorded.
    monkeypatch.setenv("MODELFAB_HOME", str(ws.settings.home))
    monkeypatch.setenv("COLUMNS", "200")
    shown = run(CliRunner(), "history", BROKEN)
    assert "error" in shown and "retrain failed: RuntimeError" in shown and "hunter2" not in shown


def test_describe_keeps_the_first_line_and_masks_credentials() -> None:
    exc = RuntimeError(f"connect to {SECRET} failed (password=swordfish)\n[SQL: SELECT 1]")
    text = describe(exc)
    assert (
        text == "RuntimeError: connect to postgresql+psycopg://***@db.internal:5432/prod failed (password=***"
    )
    assert describe(ValueError()) == "ValueError"
    assert len(describe(OSError("x" * 1000))) < 320


def test_backoff_doubles_up_to_its_cap_and_forgets_on_success() -> None:
    b = Backoff(cap=4)
    sat_out = []
    for _ in range(20):
        b.next_pass()
        if b.waiting("m"):
            sat_out.append(b.passes)
        else:
            b.failed("m")
    # Fails at passes 1, 3, 6, 11, 16: sitting out 1, 2, 4, 4 passes between.
    assert sat_out == [2, 4, 5, 7, 8, 9, 10, 12, 13, 14, 15, 17, 18, 19, 20]
    b.succeeded("m")
    b.next_pass()
    assert not b.waiting("m") and b.failed("m") == (1, 1)


def test_the_long_running_loop_applies_retention_and_survives_its_failure(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from modelfab.traffic import retention

    calls: list[int] = []

    def fake_retention(w: Workspace) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk away")

    monkeypatch.setattr(retention, "run_retention", fake_retention)
    loop = IterationLoop(ws, [], retention_every_s=0.0)
    stop = threading.Event()
    passes: list[object] = []

    def on_pass(report: object) -> None:
        passes.append(report)
        if len(passes) == 3:
            stop.set()

    loop.run_forever(0.01, stop=stop, on_pass=on_pass)
    assert len(passes) == 3
    assert len(calls) == 3  # the first round failed, the loop went on and retried
