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

__all__ = ["FastInfer", "HttpFront", "Reply", "Request"]

log = logging.getLogger("modelfab.serve")

# (status, header lines each ending in CRLF, body)
Reply = tuple[int, bytes, bytes]
INFER_PATH = re.compile(rb"/v2/models/([A-Za-z0-9_.\-]+)(?:/versions/([A-Za-z0-9_.\-]+))?/infer")
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_SKIP = {b"content-length", b"transfer-encoding", b"connection"}
_PIPELINE_LIMIT = 16


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
    """Shared state of every connection of one worker: handlers, limits and the set of connections."""

    def __init__(self, infer: FastInfer, app: Any, *, max_body_bytes: int) -> None:
        self.infer = infer
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish (up to ``grace`` seconds), close the rest."""
        self.stopping = True
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
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server_addr = _addr(transport.get_extra_info("sockname"))
        self.client_addr = _addr(transport.get_extra_info("peername"))
        self.front.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self.lost.set()
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError:
            self._fail(400, "malformed HTTP request")

    # -- httptools callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        for k, v in self._headers:
            if k == b"content-length" and v.isdigit() and int(v) > self.front.max_body_bytes:
                self._too_large = True

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._size += len(body)
        if self._size > self.front.max_body_bytes:
            self._too_large = True
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
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
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve())
        if len(self._queue) > _PIPELINE_LIMIT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

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
                if self._paused and len(self._queue) <= _PIPELINE_LIMIT // 2:
                    self._paused = False
                    transport.resume_reading()
        finally:
            self._task = None

    def _fail(self, status: int, message: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        code, head, body = _error_reply(status, message)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n%s"
            % (code, _REASONS[code], len(body), head, body)
        )
        self.transport.close()

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
