"""One worker: uvicorn (REST) and grpc.aio (gRPC) on one event loop around one InferenceService.

Workers bind their own listening sockets with SO_REUSEPORT, so the kernel spreads connections over them
and no proxy sits in the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from typing import Any

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
        self._uvicorn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self) -> None:
        import uvicorn

        from modelfab.serve.rest import create_app

        self._loop = asyncio.get_running_loop()
        app = create_app(self.service)
        config = uvicorn.Config(
            app,
            http="httptools",
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=10,
            server_header=False,
        )
        self._uvicorn = uvicorn.Server(config)
        grpc_server = None
        if self._grpc_port_wanted is not None:
            from modelfab.serve.grpc_server import create_grpc_server

            grpc_server, self.grpc_port = create_grpc_server(self.service, self.host, self._grpc_port_wanted)
            await grpc_server.start()
        watcher = asyncio.create_task(self._announce())
        try:
            await self._uvicorn.serve(sockets=[self._sock])
        finally:
            watcher.cancel()
            if grpc_server is not None:
                await grpc_server.stop(5)
            with contextlib.suppress(OSError):
                self._sock.close()

    async def _announce(self) -> None:
        while not self._uvicorn.started:
            await asyncio.sleep(0.01)
        self.started.set()

    def stop(self) -> None:
        """Ask the worker to finish in-flight requests and exit; callable from any thread."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
