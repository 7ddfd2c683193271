"""What the supervisor and its workers tell each other over one pipe per worker.

A repository load or unload reaches one worker (the kernel spreads connections over them), but it must
hold for the whole server. That worker applies it, then asks the supervisor, which relays it to every other
live worker and answers once each applied it, or after ``wait_s`` naming those that did not. The supervisor
also remembers what was loaded this way, so workers started later (restarts, scale-ups) load it too, and
tells every worker its share of the model memory as workers come and go.

Messages are small tuples, sent whole: worker -> supervisor ``("ask", id, op, name)`` and
``("applied", ref, error or None)``; supervisor -> worker ``("apply", ref or None, op, name)``,
``("done", id, [what did not apply])`` and ``("budget", bytes)``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from modelfab.errors import ModelfabError, UnavailableError
from modelfab.serve.service import InferenceService

__all__ = ["FANOUT_WAIT_S", "Peers", "Relay"]

log = logging.getLogger("modelfab.serve")
# A load on another worker fetches and builds the model: seconds for a big one.
FANOUT_WAIT_S = 15.0
_PAST = {"load": "loaded", "unload": "unloaded"}


@dataclass
class _Ask:
    origin: int
    rid: int
    op: str
    name: str
    deadline: float
    waiting: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)


class Relay:
    """The supervisor's ends of the workers' pipes: relays repository requests and hands out budgets."""

    def __init__(self, ctx: Any, wait_s: float = FANOUT_WAIT_S) -> None:
        self._ctx = ctx
        self.wait_s = wait_s
        self._conns: dict[int, Connection] = {}
        self._asks: list[_Ask] = []
        self._loaded: dict[str, None] = {}  # loaded through the repository API, oldest first
        self.budget: int | None = None

    def attach(self, index: int) -> Connection:
        """A pipe for the worker about to start as ``index``; returns the worker's end (close it here
        once the worker has started). The worker learns its budget and what the repository API loaded."""
        self.detach(index)
        ours, theirs = self._ctx.Pipe()
        self._conns[index] = ours
        if self.budget is not None:
            self._send(index, ("budget", self.budget))
        for name in self._loaded:
            self._send(index, ("apply", None, "load", name))
        return theirs  # type: ignore[no-any-return]

    def detach(self, index: int) -> None:
        """The worker exited or is retiring: it holds nothing any more, so nothing waits for it."""
        conn = self._conns.pop(index, None)
        if conn is not None:
            conn.close()
        for ask in self._asks:
            ask.waiting.discard(index)

    def connections(self) -> list[Connection]:
        return list(self._conns.values())

    def set_budget(self, budget: int) -> None:
        """Every worker's model memory budget is now ``budget`` bytes."""
        self.budget = budget
        for index in list(self._conns):
            self._send(index, ("budget", budget))

    def poll(self, now: float | None = None) -> None:
        """Handle what the workers sent, and answer requests that are complete or out of time."""
        for index, conn in list(self._conns.items()):
            try:
                while conn.poll():
                    self._handle(index, conn.recv())
            except (EOFError, OSError):  # the worker is gone; its sentinel tells the supervisor
                self.detach(index)
        now = time.monotonic() if now is None else now
        for ask in list(self._asks):
            if ask.waiting and now < ask.deadline:
                continue
            self._asks.remove(ask)
            missing = [f"worker {i} ({error})" for i, error in sorted(ask.failed.items())]
            missing += [f"worker {i} (no answer within {self.wait_s:g}s)" for i in sorted(ask.waiting)]
            if missing:
                log.warning("%s of model %s did not apply on %s", ask.op, ask.name, ", ".join(missing))
            self._send(ask.origin, ("done", ask.rid, missing))

    def _handle(self, index: int, msg: Any) -> None:
        kind = msg[0]
        if kind == "ask":
            _, rid, op, name = msg
            self._loaded.pop(name, None)
            if op == "load":
                self._loaded[name] = None
            ask = _Ask(index, rid, op, name, time.monotonic() + self.wait_s)
            for other in [i for i in self._conns if i != index]:
                if self._send(other, ("apply", (index, rid), op, name)):
                    ask.waiting.add(other)
            self._asks.append(ask)
        elif kind == "applied":
            _, (origin, rid), error = msg
            for ask in self._asks:
                if ask.origin == origin and ask.rid == rid and index in ask.waiting:
                    ask.waiting.discard(index)
                    if error is not None:
                        ask.failed[index] = error
        else:
            log.warning("worker %d sent an unknown message %r; ignored", index, kind)

    def _send(self, index: int, msg: tuple[Any, ...]) -> bool:
        conn = self._conns.get(index)
        if conn is None:
            return False
        try:
            conn.send(msg)
        except OSError:  # gone meanwhile: the supervisor restarts it, and attach brings it up to date
            self.detach(index)
            return False
        return True


class Peers:
    """A worker's end of its pipe: applies what the supervisor relays, and asks it to relay."""

    def __init__(self, conn: Connection, index: int, service: InferenceService) -> None:
        self._conn = conn
        self.index = index
        self._service = service
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[list[str]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # The supervisor answers within its own wait; this covers a supervisor that is gone or stuck.
        self.wait_s = FANOUT_WAIT_S + 5.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Messages are small and sent whole, so a readable pipe holds at least one complete message.
        self._loop.add_reader(self._conn.fileno(), self._readable)

    def stop(self) -> None:
        if self._loop is not None and not self._conn.closed:
            self._loop.remove_reader(self._conn.fileno())
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(OSError("the supervisor is gone"))

    def _readable(self) -> None:
        try:
            while self._conn.poll():
                self._dispatch(self._conn.recv())
        except (EOFError, OSError):  # the supervisor is gone: the reporter stops this worker
            self.stop()
            self._conn.close()

    def _dispatch(self, msg: Any) -> None:
        kind = msg[0]
        if kind == "budget":
            self._service.set_memory_budget(int(msg[1]))
        elif kind == "apply":
            task = asyncio.get_running_loop().create_task(self._apply(msg[1], msg[2], msg[3]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "done":
            fut = self._waiting.get(msg[1])
            if fut is not None and not fut.done():
                fut.set_result(list(msg[2]))
        else:
            log.warning("unknown message %r from the supervisor; ignored", kind)

    async def _apply(self, ref: Any, op: str, name: str) -> None:
        error: str | None = None
        try:
            await self._service.apply_repository(op, name)
        except ModelfabError as exc:
            error = exc.message
        except Exception as exc:
            log.exception("repository %s of model %s failed", op, name)
            error = f"{type(exc).__name__}: {exc}"
        if ref is None:
            if error is not None:
                log.error("could not %s model %s as the other workers did: %s", op, name, error)
            return
        try:
            self._conn.send(("applied", ref, error))
        except OSError:
            pass  # the supervisor is gone; nobody waits for the answer

    async def fan_out(self, op: str, name: str) -> None:
        """Have every other worker apply ``op`` to ``name``; UnavailableError names those that did not."""
        rid = next(self._ids)
        fut: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        done = _PAST.get(op, op)
        try:
            self._conn.send(("ask", rid, op, name))
            missing = await asyncio.wait_for(fut, self.wait_s)
        except (OSError, TimeoutError):
            raise UnavailableError(
                f"model {name} was {done} on worker {self.index} only: the supervisor did not relay it to "
                "the other workers; retry the request"
            ) from None
        finally:
            self._waiting.pop(rid, None)
        if missing:
            raise UnavailableError(
                f"model {name} was {done} on worker {self.index} but not on {', '.join(missing)}; "
                "retry the request"
            )
