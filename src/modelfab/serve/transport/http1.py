"""A lean HTTP/1.1 server on httptools: infer requests go straight to one coroutine, the rest to ASGI.

Why not uvicorn for everything: on the infer path uvicorn and Starlette spend more CPU per request than a
small model does (ASGI scope and message dicts, middleware layers, two socket writes per response). Here a
request is parsed by httptools, handed to one coroutine and answered with one ``write``. Every other route
(metadata, repository, metrics, extra routes) goes to the Starlette app through a small ASGI bridge; they are
not hot, and keep Starlette's routing and error handling.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

from modelfab.serve.options import ServeOptions

__all__ = ["FastInfer", "HttpFront", "Reply", "Request"]

log = logging.getLogger("modelfab.serve")

# (status, header lines each ending in CRLF, body)
Reply = tuple[int, bytes, bytes]
INFER_PATH = re.compile(rb"/v2/models/([A-Za-z0-9_.\-]+)(?:/versions/([A-Za-z0-9_.\-]+))?/infer")
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_SKIP = {b"content-length", b"transfer-encoding", b"connection"}


@dataclass(slots=True)
class Request:
    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    http_version: str
    too_large: bool

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


FastInfer = Callable[[str, str | None, Request], Awaitable[Reply]]


def _error_reply(status: int, message: str) -> Reply:
    import orjson

    return status, b"content-type: application/json\r\n", orjson.dumps({"error": message})


class HttpFront:
    """Shared state of every connection of one worker: handlers, limits and the set of connections.

    Timeouts are enforced by one sweep over the connections a few times a second, against a clock the
    sweep updates: no timer and no clock read per request.
    """

    def __init__(self, infer: FastInfer, app: Any, options: ServeOptions) -> None:
        self.infer = infer
        self.app = app
        self.max_body_bytes = options.max_body_bytes
        self.max_url_bytes = options.max_url_bytes
        self.max_header_bytes = options.max_header_bytes
        self.max_head_bytes = options.max_url_bytes + options.max_header_bytes
        self.max_headers = options.max_headers
        self.max_connections = options.max_connections
        self.keepalive_timeout_s = options.keepalive_timeout_s
        self.read_timeout_s = options.read_timeout_s
        self.max_pipelined = max(1, options.max_pipelined)
        self.max_pipelined_bytes = options.max_pipelined_bytes
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.now = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.now = loop.time()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        # Connections note times from this coarse clock, so a timeout fires within a tick of when it is due:
        # a quarter of the shortest timeout, at most a second.
        tick = max(0.01, min(1.0, self.read_timeout_s / 4, self.keepalive_timeout_s / 4))
        while True:
            await asyncio.sleep(tick)
            self.now = now = loop.time()
            for conn in list(self.connections):
                try:
                    conn.check_timeouts(now)
                except Exception:  # one odd connection must not end the timeouts of all the others
                    log.exception("checking a connection's timeouts failed; closing it")
                    conn.abort()

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish (up to ``grace`` seconds), close the rest."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
            for conn in list(self.connections):
                conn.close_if_idle()
        for conn in list(self.connections):
            conn.abort()

    async def dispatch(self, req: Request, conn: _Connection) -> Reply:
        if req.too_large:
            return _error_reply(413, f"request body is over the {self.max_body_bytes} byte limit")
        path, _, query = req.url.partition(b"?")
        if req.method == b"POST":
            m = INFER_PATH.fullmatch(path)
            if m is not None:
                version = m.group(2)
                return await self.infer(m.group(1).decode(), version.decode() if version else None, req)
        return await self._asgi(req, path, query, conn)

    async def _asgi(self, req: Request, path: bytes, query: bytes, conn: _Connection) -> Reply:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": req.http_version,
            "method": req.method.decode("latin-1"),
            "scheme": "http",
            "path": unquote(path.decode("latin-1")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": req.headers,
            "server": conn.server_addr,
            "client": conn.client_addr,
            "state": {},
        }
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": req.body, "more_body": False}
            await conn.lost.wait()
            return {"type": "http.disconnect"}

        status = 0
        head: list[bytes] = []
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for k, v in message.get("headers", ()):
                    if k.lower() not in _SKIP:
                        head.append(k + b": " + v + b"\r\n")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, receive, send)
        except Exception:
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            return _error_reply(500, "internal server error; the server log has the details")
        if status == 0:
            return _error_reply(500, "internal server error; the server log has the details")
        return status, b"".join(head), b"".join(chunks)


class _Stop(Exception):
    """Raised in a parser callback to stop parsing a connection that is being refused."""


class _Connection(asyncio.Protocol):
    """One client connection; requests are answered in order (pipelining allowed, bounded)."""

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.Event()
        self.server_addr: tuple[str, int] | None = None
        self.client_addr: tuple[str, int] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._queue: deque[Request] = deque()
        self._queued_bytes = 0  # bodies of requests read and not yet answered
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._writable: asyncio.Event | None = None  # set while the transport's write buffer is full
        self._blocked_since = 0.0
        # A request began and has not arrived whole (``_since`` is when it began); else, with no task,
        # the connection is idle since ``_since``. Times are the front's coarse clock: no syscall here.
        self._reading = False
        self._in_head = False
        self._head_bytes = 0
        self._since = front.now
        self._continue = False  # a "100 Continue" owed once the answers before it are written
        self._final: Reply | None = None  # an error to answer after the answers owed, then close

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass
        front = self.front
        if len(front.connections) >= front.max_connections:
            self._reject(503, f"the server has {front.max_connections} connections open; retry shortly")
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server_addr = _addr(transport.get_extra_info("sockname"))
        self.client_addr = _addr(transport.get_extra_info("peername"))
        front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self.lost.set()
        self._queue.clear()
        if self._writable is not None:
            self._writable.set()

    def pause_writing(self) -> None:
        # A client that does not read its answers: stop answering (and so, soon, reading) until it does.
        self._writable = asyncio.Event()
        self._blocked_since = self.front.now

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()
            self._writable = None

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError:
            self._reject(400, "malformed HTTP request")  # a no-op when a callback refused the request
        else:
            # httptools gathers a header's value before calling on_header: bound what it gathers.
            if self._in_head and self._head_bytes > self.front.max_head_bytes:
                self._reject(431, self._header_message())

    # -- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._size = 0
        self._too_large = False
        self._reading = self._in_head = True
        self._head_bytes = 0
        self._since = self.front.now

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.front.max_url_bytes:
            self._reject(414, f"the URL is over the {self.front.max_url_bytes} byte limit")
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._header_bytes += len(name) + len(value)
        front = self.front
        if len(self._headers) > front.max_headers or self._header_bytes > front.max_header_bytes:
            self._reject(431, self._header_message())
            raise _Stop

    def _header_message(self) -> str:
        f = self.front
        return (
            f"request headers are over the limit of {f.max_headers} headers and {f.max_header_bytes} "
            "bytes; send fewer or shorter headers"
        )

    def on_headers_complete(self) -> None:
        self._in_head = False
        expect = None
        for k, v in self._headers:
            if k == b"content-length" and v.isdigit() and int(v) > self.front.max_body_bytes:
                self._too_large = True
            elif k == b"expect":
                expect = v
        if expect is not None and expect.lower() == b"100-continue":
            self._expect_continue()

    def _expect_continue(self) -> None:
        if self._too_large:
            # Refused before the client sends the body; the connection closes as the body is not read.
            self._reject(413, f"request body is over the {self.front.max_body_bytes} byte limit")
            raise _Stop
        if self.parser.get_http_version() != "1.1":
            return
        if self._task is None and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        else:
            self._continue = True  # after the answers owed, which must come first

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._size += len(body)
        front = self.front
        if self._size > front.max_body_bytes:
            self._too_large = True
            self._body = []
            return
        self._body.append(body)
        if self._task is not None and self._queued_bytes + self._size > front.max_pipelined_bytes:
            self._pause()

    def on_message_complete(self) -> None:
        self._reading = self._continue = False
        front = self.front
        if len(self._queue) >= 2 * front.max_pipelined:
            # One read held more requests than the pause could stop: refuse rather than hold them all.
            self._reject(
                429,
                f"more than {2 * front.max_pipelined} requests were sent on one connection without "
                "reading the answers; read answers before sending more",
            )
            raise _Stop
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        req = Request(
            self.parser.get_method(),
            self._url,
            self._headers,
            body,
            self.parser.should_keep_alive(),
            self.parser.get_http_version(),
            self._too_large,
        )
        self._queue.append(req)
        self._queued_bytes += len(body)
        self._size = 0  # the body now counts as queued
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve())
        if len(self._queue) >= front.max_pipelined or self._queued_bytes > front.max_pipelined_bytes:
            self._pause()

    # -- flow control ----------------------------------------------------------------------------------
    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume_if_drained(self, all_answered: bool = False) -> None:
        # With every answer written, reading resumes whatever is buffered: nothing else would resume it.
        front = self.front
        if (
            self._paused
            and self._final is None
            and (
                all_answered
                or (
                    len(self._queue) <= front.max_pipelined // 2
                    and self._queued_bytes + self._size <= front.max_pipelined_bytes
                )
            )
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self._paused = False
            if self._reading:  # the time paused was ours, not the client's
                self._since = front.now
            self.transport.resume_reading()

    def check_timeouts(self, now: float) -> None:
        """Called by the front's periodic sweep: drop slow requests and idle keep-alive connections."""
        front = self.front
        if self.transport is None:
            return
        if self._writable is not None:
            # Answers unread for as long as a request may take to arrive: the client holds a connection
            # (and its buffers) without using it.
            if now - self._blocked_since > front.read_timeout_s:
                self.transport.abort()
            return
        if self._final is not None:
            return
        if self._reading:
            if not self._paused and now - self._since > front.read_timeout_s:
                self._reject(
                    408, f"the request did not arrive whole within {front.read_timeout_s:g}s of its start"
                )
        elif self._task is None and now - self._since > front.keepalive_timeout_s:
            self.transport.close()

    # -- answering -------------------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while self._queue:
                req = self._queue.popleft()
                try:
                    status, head, body = await self.front.dispatch(req, self)
                except Exception:
                    log.exception("unexpected error answering a request")
                    status, head, body = _error_reply(500, "internal server error; see the server log")
                self._queued_bytes -= len(req.body)
                if self._writable is not None:
                    await self._writable.wait()
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                keep = req.keep_alive and not self.front.stopping
                line = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n" % (
                    status,
                    _REASONS.get(status, b"Unknown"),
                    len(body),
                )
                tail = b"\r\n" if keep else b"connection: close\r\n\r\n"
                transport.write(line + head + tail + (b"" if req.method == b"HEAD" else body))
                if not keep:
                    transport.close()
                    return
                if self._paused:
                    self._resume_if_drained()
            if self._final is not None:
                self._write_final()
            elif self._continue and self.transport is not None:
                self._continue = False
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        finally:
            self._task = None
            if not self._reading:
                self._since = self.front.now
            if self._paused:
                self._resume_if_drained(all_answered=True)

    def _reject(self, status: int, message: str) -> None:
        """Answer ``status`` after the answers owed (in order), then close; read nothing more."""
        if self._final is not None or self.transport is None or self.transport.is_closing():
            return
        self._final = _error_reply(status, message)
        self._pause()
        if self._task is None:
            self._write_final()

    def _write_final(self) -> None:
        transport = self.transport
        if self._final is None or transport is None or transport.is_closing():
            return
        code, head, body = self._final
        transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n%s%sconnection: close\r\n\r\n%s"
            % (code, _REASONS[code], len(body), head, b"retry-after: 1\r\n" if code == 503 else b"", body)
        )
        transport.close()

    def close_if_idle(self) -> None:
        if self._task is None and not self._queue and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _addr(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
