"""Repository load/unload on a real 2-worker server: whichever worker gets the request, every worker acts."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from serve_helpers import FakeSource, free_port, start_server, wait_for

pytestmark = pytest.mark.slow


@contextmanager
def _two_workers(source: FakeSource, home: Path) -> Iterator[str]:
    port = free_port()
    proc = start_server(source, home, port)
    url = f"http://127.0.0.1:{port}"
    status = home / "run" / "serve.json"
    try:
        wait_for(lambda: len(json.loads(status.read_text())["workers"]) == 2, 60, "two workers")
        wait_for(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, 60, "ready")
        # Every worker serving: metrics count each once it has written its first snapshot.
        wait_for(lambda: "modelfab_workers 2.0" in httpx.get(f"{url}/metrics").text, 60, "both workers")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0


def _series(metrics: str, prefix: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


def _states(url: str, name: str, connections: int = 12) -> set[str]:
    """The model's state as answered on fresh connections (the kernel spreads them over the workers)."""
    states = set()
    for _ in range(connections):
        with httpx.Client(base_url=url, timeout=30) as c:
            index = c.post("/v2/repository/index").json()
            states |= {m["state"] for m in index if m["name"] == name}
    return states


def test_load_and_unload_act_on_every_worker(source: FakeSource, tmp_path: Path) -> None:
    with _two_workers(source, tmp_path) as url:
        r = httpx.post(f"{url}/v2/repository/models/double/load", timeout=30)
        assert r.status_code == 200, r.text
        # Answered only once both applied it: each worker loaded it once, right away.
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert _series(metrics, 'modelfab_model_loads_total{model="double",version="1"}') == 2.0
        assert _states(url, "double") == {"READY"}

        r = httpx.post(f"{url}/v2/repository/models/double/unload", timeout=30)
        assert r.status_code == 200, r.text
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        unloads = 'modelfab_model_evictions_total{model="double",reason="unload",version="1"}'
        assert _series(metrics, unloads) == 2.0
        assert _series(metrics, 'modelfab_model_resident_bytes{model="double"') is None
        assert _states(url, "double") == {"UNLOADED"}

        # Unknown models are refused by the worker that got the request, before any other is asked.
        r = httpx.post(f"{url}/v2/repository/models/nope/load", timeout=30)
        assert r.status_code == 404
        assert "nope" in r.json()["error"]
