"""One worker: REST (:mod:`~modelfab.serve.transport.http1`) and grpc.aio (gRPC) on one event loop
around one service.

Workers bind their own listening sockets with SO_REUSEPORT, so the kernel spreads connections over them
and no proxy sits in the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import threading

from modelfab.serve.service import InferenceService

__all__ = ["Worker", "bind_socket"]

log = logging.getLogger("modelfab.serve")


def bind_socket(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class Worker:
    """Serves REST (and gRPC when ``grpc_port`` is not None) until :meth:`stop`."""

    def __init__(
        self,
        service: InferenceService,
        host: str = "127.0.0.1",
        port: int = 0,
        grpc_port: int | None = None,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        self.service = service
        self.host = host
        self._sock = sock or bind_socket(host, port)
        self.port: int = self._sock.getsockname()[1]
        self._grpc_port_wanted = grpc_port
        self.grpc_port: int | None = None
        self.started = threading.Event()
        self.grace_s = 10.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False

    async def serve(self) -> None:
        from modelfab.serve.transport.http1 import HttpFront
        from modelfab.serve.transport.rest import create_app, fast_infer

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        front = HttpFront(fast_infer(self.service), create_app(self.service), self.service.options)
        await self.service.start()
        # What exists now (modules, ONNX Runtime, the app, pinned models) lives as long as the worker; out of
        # the collector's view, full collections no longer walk it all on the event loop (tail latency).
        gc.freeze()
        grpc_server = None
        try:
            if self._grpc_port_wanted is not None:
                from modelfab.serve.transport.grpc import create_grpc_server

                grpc_server, self.grpc_port = create_grpc_server(
                    self.service, self.host, self._grpc_port_wanted
                )
                await grpc_server.start()
            await front.start(self._sock)
            self.started.set()
            await self._stop.wait()
            await front.stop(self.grace_s)
        finally:
            if grpc_server is not None:
                await grpc_server.stop(5)
            with contextlib.suppress(OSError):
                self._sock.close()
            await self.service.stop()

    def stop(self) -> None:
        """Ask the worker to finish in-flight requests and exit; callable from any thread."""
        self._stop_requested = True
        loop, event = self._loop, self._stop
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
