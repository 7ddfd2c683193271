"""``modelfab up``: server and loop together, stopped cleanly by SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from modelfab.demo.server import ServerProcess, free_port


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_serves_runs_loop_passes_and_stops_on_sigterm(home: Path) -> None:
    port = free_port()
    args = ["up", "--recipe", str(home / "churn.yaml"), "--port", str(port), "--grpc-port", "0"]
    up = ServerProcess(home, [*args, "--workers", "1", "--interval", "0.5"], port, home / "up.log")
    up.start(timeout=60)
    try:
        assert httpx.get(f"http://{up.url}/v2/health/ready").status_code == 200
        deadline = time.monotonic() + 60
        while "pass: 3 model(s) watched" not in up.log_path.read_text():
            assert time.monotonic() < deadline, up.log_path.read_text()
            time.sleep(0.1)
        assert up.proc is not None
        os.kill(up.proc.pid, signal.SIGTERM)  # the parent only: it must stop its server itself
        assert up.proc.wait(30) == 0, up.log_path.read_text()
        # Every process of the group ends (exited workers may stay zombies for a moment until reaped).
        deadline = time.monotonic() + 20
        while group_alive(up.proc.pid):
            assert time.monotonic() < deadline, "a server process outlived modelfab up"
            time.sleep(0.1)
    finally:
        up.stop()
