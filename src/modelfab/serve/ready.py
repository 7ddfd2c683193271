"""Waiting for a ``modelfab serve`` child process to answer ready: what ``modelfab up`` and the demos share.

Plain ``urllib`` on purpose: ``modelfab up`` must run with the package's own dependencies only.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request

from modelfab.errors import UnavailableError

__all__ = ["wait_until_ready"]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_ready(
    proc: subprocess.Popen[bytes], url: str, timeout: float, what: str, stop: threading.Event | None = None
) -> bool:
    """Poll ``http://URL/v2/health/ready`` until it answers 200 (True) or ``stop`` is set (False); raise
    UnavailableError naming ``what`` if the process exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while stop is None or not stop.is_set():
        if proc.poll() is not None:
            raise UnavailableError(f"{what} exited with code {proc.returncode}")
        if _ready(url):
            return True
        if time.monotonic() > deadline:
            raise UnavailableError(f"{what} was not ready on {url} within {timeout:.0f}s")
        time.sleep(0.1)
    return False
