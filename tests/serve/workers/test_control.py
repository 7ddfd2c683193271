"""The supervisor's relay of repository requests and budgets, over real pipes in one process."""

from __future__ import annotations

import multiprocessing as mp
import time

from modelfab.serve.workers.control import Relay


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
