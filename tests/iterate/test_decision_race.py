"""A person's rollback racing the loop's promotion of the same model: whichever runs first, the history and
the champion alias agree, and a recorded rollback never leaves the challenger champion."""

from __future__ import annotations

import threading

from modelfab.iterate.decisions import CHALLENGER, DecisionLog
from modelfab.iterate.faults import Faults
from modelfab.store import JobOutcome, Workspace

NAME = "r.a"
ROUNDS = {"sqlite": 40, "postgresql": 8}


def version(promote: bool) -> JobOutcome:
    return JobOutcome(
        key="a",
        partition="a",
        model=NAME,
        status="passed",
        recipe="r",
        metric="roc_auc",
        score=0.8,
        artifact_digest="e" * 64,
        artifact_size=3,
        promote=promote,
    )


def race_once(ws: Workspace, log: DecisionLog) -> None:
    """One trial of v2 against champion v1; the loop promotes it while a person rolls back."""
    ws.registry.set_alias(NAME, CHALLENGER, 2, "test", "next round")
    log.start_trial(NAME, "canary", 2, 1, 0.5, "trial", {})
    trial = log.deployments()[NAME]  # what the loop read at the start of its pass
    start = threading.Barrier(2)
    errors: list[BaseException] = []
    actions: list[tuple[str, str, str]] = []

    def loop_promotes() -> None:
        try:
            start.wait()
            # As the loop does it: the trial it judged, inside its per-model guard.
            with Faults(log).guard(NAME, "trial", actions):
                log.promote(NAME, 2, "online metric holds", {}, trial=trial)
        except BaseException as exc:
            errors.append(exc)

    def person_rolls_back() -> None:
        try:
            start.wait()
            log.rollback(NAME, "looks wrong", {"manual": True}, actor="ana")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop_promotes), threading.Thread(target=person_rolls_back)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == [] and actions == []  # a superseded promotion is no failure of the model


def test_a_manual_rollback_racing_the_loops_promotion_leaves_history_and_aliases_agreeing(
    any_ws: Workspace,
) -> None:
    ws = any_ws
    ws.registry.record_outcomes(None, [version(promote=True)])
    ws.registry.record_outcomes(None, [version(promote=False)])
    log = DecisionLog(ws.registry)
    rounds = ROUNDS[ws.engine.dialect.name]
    for _ in range(rounds):
        before = len(log.history(NAME))
        race_once(ws, log)
        steps = [d for d in log.history(NAME)[before:] if d.action in ("promote", "rollback")]
        # The rollback is the person's last word whatever the order: the champion is v1 again.
        assert steps[-1].action == "rollback" and steps[-1].actor == "ana"
        assert steps[-1].champion == 1
        assert ws.registry.resolve(NAME) == 1
        assert [d.action for d in steps] in (["promote", "rollback"], ["rollback"])
        if len(steps) == 2:  # the loop went first; the person's rollback undid its promotion
            assert steps[0].champion == 2 and steps[1].evidence["replaced"] == 2
        else:  # the person went first and ended the trial; the loop's promotion did not happen
            assert steps[0].challenger == 2 and steps[0].evidence["mode"] == "canary"
        assert log.deployments() == {}
        assert CHALLENGER not in ws.registry.get_version(NAME, 2).aliases
    # The champion's moves in the alias history are the ones the decisions record, in order.
    moves = [m.version for m in ws.registry.alias_history(NAME, "champion")]
    recorded = [1] + [d.champion for d in log.history(NAME) if d.action in ("promote", "rollback")]
    assert changes(recorded) == changes(moves)


def changes(champions: list[int | None]) -> list[int | None]:
    return [c for i, c in enumerate(champions) if i == 0 or c != champions[i - 1]]
