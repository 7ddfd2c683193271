"""The supervisor's relay of repository requests and budgets, over real pipes in one process."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from multiprocessing.connection import Connection
from typing import Any

import pytest

from modelfab.errors import UnavailableError
from modelfab.serve.workers.control import Peers, Relay


def _relay(wait_s: float = 5.0) -> Relay:
    return Relay(mp.get_context("forkserver"), wait_s=wait_s)  # only its Pipe() is used here


def test_a_request_is_answered_once_every_other_worker_applied_it() -> None:
    relay = _relay()
    w0, w1, w2 = relay.attach(0), relay.attach(1), relay.attach(2)
    w0.send(("ask", 7, "unload", "m"))
    relay.poll()
    assert w1.recv() == ("apply", (0, 7), "unload", "m")
    assert w2.recv() == ("apply", (0, 7), "unload", "m")
    assert not w0.poll()  # the asking worker applied it itself
    w1.send(("applied", (0, 7), None))
    relay.poll()
    assert not w0.poll()  # worker 2 has not answered yet
    w2.send(("applied", (0, 7), None))
    relay.poll()
    assert w0.recv() == ("done", 7, [])


def test_the_answer_names_workers_that_failed_or_did_not_answer() -> None:
    relay = _relay(wait_s=0.5)
    w0, w1, w2 = relay.attach(0), relay.attach(1), relay.attach(2)
    w1.send(("ask", 1, "load", "big"))
    relay.poll()
    w0.recv(), w2.recv()
    w0.send(("applied", (1, 1), "the memory budget is full of models in use; retry shortly"))
    relay.poll()
    assert not w1.poll()
    relay.poll(now=time.monotonic() + 1.0)  # past the wait: worker 2 never answered
    assert w1.recv() == (
        "done",
        1,
        [
            "worker 0 (the memory budget is full of models in use; retry shortly)",
            "worker 2 (no answer within 0.5s)",
        ],
    )


def test_a_worker_that_exits_is_not_waited_for() -> None:
    relay = _relay()
    w0, w1 = relay.attach(0), relay.attach(1)
    w0.send(("ask", 3, "unload", "m"))
    relay.poll()
    w1.close()  # died before answering: it holds nothing any more
    relay.poll()
    assert w0.recv() == ("done", 3, [])


def test_workers_started_later_load_what_was_loaded_and_get_the_budget() -> None:
    relay = _relay()
    relay.budget = 1000
    w0 = relay.attach(0)
    assert w0.recv() == ("budget", 1000)
    for msg in [("ask", 1, "load", "a"), ("ask", 2, "load", "b"), ("ask", 3, "unload", "a")]:
        w0.send(msg)
        relay.poll()
        assert w0.recv()[0] == "done"
    relay.set_budget(500)
    assert w0.recv() == ("budget", 500)
    w1 = relay.attach(1)  # a restart or a scale-up
    assert w1.recv() == ("budget", 500)
    assert w1.recv() == ("apply", None, "load", "b")  # "a" was unloaded since
    assert not w1.poll()


class _Service:
    """What Peers calls on the service; ``unload`` of ``busy`` fails as a real one can."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []
        self.budgets: list[int] = []

    async def apply_repository(self, op: str, name: str) -> None:
        if name == "busy":
            raise UnavailableError("model busy is in use; retry")
        self.applied.append((op, name))

    def set_memory_budget(self, budget: int) -> None:
        self.budgets.append(budget)


async def _recv(conn: Connection) -> Any:
    while not conn.poll():
        await asyncio.sleep(0.01)
    return conn.recv()


def test_a_worker_applies_what_is_relayed_and_answers() -> None:
    supervisor, theirs = mp.Pipe()
    service = _Service()

    async def scenario() -> list[Any]:
        peers = Peers(theirs, 1, service)  # type: ignore[arg-type]
        peers.start()
        supervisor.send(("budget", 300))
        supervisor.send(("apply", (0, 5), "unload", "m"))
        supervisor.send(("apply", (0, 6), "unload", "busy"))
        supervisor.send(("apply", None, "load", "n"))  # a replay for a new worker: nobody waits
        answers = [await _recv(supervisor), await _recv(supervisor)]
        peers.stop()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [("applied", (0, 5), None), ("applied", (0, 6), "model busy is in use; retry")]
    assert service.applied == [("unload", "m"), ("load", "n")]
    assert service.budgets == [300]


def test_fan_out_fails_naming_the_workers_that_did_not_apply() -> None:
    supervisor, theirs = mp.Pipe()

    async def scenario() -> tuple[Any, str, str]:
        peers = Peers(theirs, 0, _Service())  # type: ignore[arg-type]
        peers.start()
        asked = asyncio.create_task(peers.fan_out("load", "m"))
        ask = await _recv(supervisor)
        supervisor.send(("done", ask[1], ["worker 2 (no answer within 15s)"]))
        with pytest.raises(UnavailableError) as partial:
            await asked
        supervisor.close()  # the supervisor is gone
        await asyncio.sleep(0.05)
        with pytest.raises(UnavailableError) as gone:
            await peers.fan_out("unload", "m")
        return ask, partial.value.message, gone.value.message

    ask, partial, gone = asyncio.run(scenario())
    assert ask[0] == "ask" and ask[2:] == ("load", "m")
    assert partial == (
        "model m was loaded on worker 0 but not on worker 2 (no answer within 15s); retry the request"
    )
    assert "unloaded on worker 0 only" in gone
