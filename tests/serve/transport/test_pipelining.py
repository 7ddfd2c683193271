"""Pipelining clients that do not read their answers cannot make the HTTP/1 front buffer without limit.

The front runs here on loopback with an infer handler that answers only once the test opens a gate, so what
the front holds while requests pile up can be looked at.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from wire import Wire, request, wait_until

from modelfab.serve.options import ServeOptions
from modelfab.serve.transport.http1 import HttpFront, Reply
from modelfab.serve.transport.http1 import Request as RawRequest

T = TypeVar("T")
NewLoop = Callable[[], asyncio.AbstractEventLoop]
READ_SIZE = 256 << 10  # the most asyncio's transports read at once


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["asyncio", "uvloop"])
def new_loop(request: pytest.FixtureRequest) -> Callable[[], asyncio.AbstractEventLoop]:
    """Workers run on uvloop; its transports pause and buffer on their own terms, so both are tried."""
    if request.param == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


class GatedFront:
    def __init__(
        self,
        options: ServeOptions,
        reply_bytes: int,
        new_loop: Callable[[], asyncio.AbstractEventLoop],
        *,
        open_gate: bool = False,
    ) -> None:
        self.options = options
        self.reply = b"r" * reply_bytes
        self.open_at_start = open_gate
        self.loop = new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> GatedFront:
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.front.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        self._sock.close()

    async def _start(self) -> None:
        self.gate = asyncio.Event()
        if self.open_at_start:
            self.gate.set()

        async def infer(model: str, version: str | None, req: RawRequest) -> Reply:
            await self.gate.wait()
            return 200, b"", req.body[:8] + self.reply

        self.front = HttpFront(infer, _app, self.options)
        await self.front.start(self._sock)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def open_gate(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.set)

    def held(self) -> tuple[int, int, bool, int]:
        """The one connection's queued requests, buffered body bytes, whether reading is paused, and the
        bytes waiting in its write buffer."""

        async def look() -> tuple[int, int, bool, int]:
            if not self.front.connections:  # not accepted yet
                return 0, 0, False, 0
            (c,) = self.front.connections
            assert c.transport is not None
            return len(c._queue), c._queued_bytes + c._size, c._paused, c.transport.get_write_buffer_size()

        return self.call(look())


def _infer(i: int, size: int) -> bytes:
    return request("POST", "/v2/models/m/infer", b"%08d" % i + b"x" * (size - 8))


def test_a_client_that_does_not_read_answers_holds_bounded_memory(new_loop: NewLoop) -> None:
    options = ServeOptions(max_pipelined=4, max_pipelined_bytes=256 << 10, max_body_bytes=1 << 20)
    count, size, reply = 48, 128 << 10, 1 << 20
    with GatedFront(options, reply, new_loop) as server, Wire(server.url, timeout=60) as w:
        sender = threading.Thread(target=lambda: w.send(b"".join(_infer(i, size) for i in range(count))))
        sender.start()

        # Answers held back: reading pauses once the requests read ahead reach the byte limit.
        assert wait_until(lambda: server.held()[2])
        time.sleep(0.2)  # were it still reading, more would arrive meanwhile
        queued, buffered, paused, _ = server.held()
        assert paused and queued <= 2 * options.max_pipelined
        assert buffered <= options.max_pipelined_bytes + READ_SIZE

        # Answers flow but the client reads none: answering stops once the write buffer is full.
        server.open_gate()
        assert wait_until(lambda: server.held()[3] > 0)
        time.sleep(0.2)
        queued, buffered, paused, unsent = server.held()
        assert unsent <= reply + (1 << 20)
        assert buffered <= options.max_pipelined_bytes + READ_SIZE

        # The client reads at last: every answer, in order, and the connection goes on.
        for i in range(count):
            status, _, body = w.response()
            assert status == 200 and body[:8] == b"%08d" % i and len(body) == 8 + reply
        sender.join(30)
        w.send(request("GET", "/v2/health/live"))
        assert w.response() == (200, {"content-length": "2"}, b"ok")


def test_a_burst_of_pipelined_requests_is_cut_off_after_the_answers_owed(new_loop: NewLoop) -> None:
    options = ServeOptions(max_pipelined=4)
    with GatedFront(options, 10, new_loop, open_gate=True) as server, Wire(server.url) as w:
        w.send(b"".join(_infer(i, 100) for i in range(50)))  # one write: more than the pause can stop
        for i in range(2 * options.max_pipelined):
            status, _, body = w.response()
            assert status == 200 and body[:8] == b"%08d" % i
        status, headers, body = w.response()
        assert status == 429 and headers["connection"] == "close"
        assert b"read answers before sending more" in body
        assert w.closed_by_server()


def test_a_client_that_never_reads_its_answers_is_disconnected(new_loop: NewLoop) -> None:
    options = ServeOptions(read_timeout_s=0.5)
    with GatedFront(options, 1 << 20, new_loop, open_gate=True) as server, Wire(server.url, timeout=60) as w:
        sender = threading.Thread(
            target=lambda: _send_until_refused(w, b"".join(_infer(i, 100) for i in range(64)))
        )
        sender.start()
        assert wait_until(lambda: server.held()[3] > 0)  # answers wait to be written
        assert wait_until(lambda: not server.call(_connections(server)))  # ... and not forever
        sender.join(30)


async def _connections(server: GatedFront) -> int:
    return len(server.front.connections)


def _send_until_refused(w: Wire, data: bytes) -> None:
    try:
        w.send(data)
    except OSError:
        pass


def test_a_body_over_the_read_ahead_limit_is_served_and_the_connection_goes_on(new_loop: NewLoop) -> None:
    options = ServeOptions(max_pipelined_bytes=64 << 10, max_body_bytes=1 << 20)
    with GatedFront(options, 10, new_loop, open_gate=True) as server, Wire(server.url) as w:
        w.send(_infer(0, 512 << 10))
        assert w.response()[2][:8] == b"%08d" % 0
        w.send(_infer(1, 512 << 10) + _infer(2, 512 << 10))  # pipelined, each over the limit
        assert [w.response()[2][:8] for _ in range(2)] == [b"%08d" % 1, b"%08d" % 2]
        w.send(request("GET", "/v2/health/live"))
        assert w.response()[0] == 200
