"""A ``modelfab serve`` subprocess for the quickstart: started, awaited until ready, stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from modelfab.errors import UnavailableError

__all__ = ["demo_server", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def demo_server(home: Path, port: int = 0, timeout: float = 90.0) -> Iterator[str]:
    """Yields ``host:port`` of a ready server on ``home``; stops it (SIGTERM, then SIGKILL) afterwards."""
    import httpx

    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "modelfab.cli.main",
        "serve",
        "--port",
        str(port),
        "--grpc-port",
        str(free_port()),
        "--workers",
        "auto",
        "--max-memory",
        "256MiB",
    ]
    env = {**os.environ, "MODELFAB_HOME": str(home)}
    log = (home / "quickstart" / "serve.log").open("ab")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise UnavailableError(f"modelfab serve exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"http://{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise UnavailableError(f"modelfab serve was not ready within {timeout:.0f}s; see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
