"""A ``modelfab serve`` (or ``modelfab up``) subprocess: started in its own process group, awaited until
ready, stopped. The quickstart serves through it and the end-to-end tests kill and restart it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from modelfab.serve.ready import wait_until_ready

__all__ = ["ServerProcess", "demo_server", "free_port", "serve_args"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_args(
    port: int,
    *,
    workers: str = "auto",
    max_memory: str = "256MiB",
    log_sample_rate: float = 1.0,
    grpc: bool = True,
) -> list[str]:
    """``modelfab serve`` arguments for a loopback server on ``port``."""
    return [
        "serve",
        "--port",
        str(port),
        "--grpc-port",
        str(free_port() if grpc else 0),
        "--workers",
        workers,
        "--max-memory",
        max_memory,
        "--log-sample-rate",
        str(log_sample_rate),
    ]


class ServerProcess:
    """``python -m modelfab.cli.main ARGS`` on ``home``, output appended to ``log_path``.

    The child leads its own session, so signals go to it and every worker it forked (``signal``), and a
    stopped parent never leaves workers behind.
    """

    def __init__(self, home: Path, args: Sequence[str], port: int, log_path: Path | None = None) -> None:
        self.home = Path(home)
        self.args = list(args)
        self.port = port
        self.url = f"127.0.0.1:{port}"
        self.log_path = log_path or self.home / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 90.0) -> str:
        """Start the process and wait until ``/v2/health/ready`` answers 200; returns ``host:port``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        env = {**os.environ, "MODELFAB_HOME": str(self.home)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelfab.cli.main", *self.args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        wait_until_ready(self.proc, self.url, timeout, f"modelfab {self.args[0]} (see {self.log_path})")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the group, SIGKILL it if it has not exited within ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        if not self._exited(timeout):
            self.signal(signal.SIGKILL)
        self._exited(10.0)
        # Workers that outlived their parent would keep the port. The parent is a zombie until reaped,
        # so its process group id cannot name anyone else yet.
        self.signal(signal.SIGKILL)
        self.proc.wait(5)
        self._close_log()
        return self.proc.returncode

    def _exited(self, timeout: float) -> bool:
        """Wait for the parent to exit without reaping it."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True  # already reaped
            if info is not None:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would, and reap the parent."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        self._close_log()


@contextlib.contextmanager
def demo_server(
    home: Path,
    port: int = 0,
    timeout: float = 90.0,
    *,
    workers: str = "auto",
    log_sample_rate: float = 1.0,
) -> Iterator[str]:
    """Yields ``host:port`` of a ready ``modelfab serve`` on ``home``; stops it afterwards."""
    port = port or free_port()
    server = ServerProcess(
        home,
        serve_args(port, workers=workers, log_sample_rate=log_sample_rate),
        port,
        Path(home) / "quickstart" / "serve.log",
    )
    server.start(timeout)
    try:
        yield server.url
    finally:
        server.stop()
