"""``run_server`` end to end in its own process: REST and gRPC on uvloop workers, demo traffic, metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
from serve_helpers import ROOT, FakeSource, dump_source, free_port, wait_for

from modelfab.demo.traffic import send_demo_traffic

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_run_server_with_demo_traffic(source: FakeSource, tmp_path: Path) -> None:
    dump_source(source, tmp_path / "fake_registry")
    port, grpc_port = free_port(), free_port()
    script = (
        "from modelfab.settings import Settings\n"
        "from modelfab.serve import run_server\n"
        f"run_server(Settings(), port={port}, grpc_port={grpc_port}, workers=2, max_memory_bytes='64MiB',"
        " source_factory='serve_helpers:file_source', log_level='WARNING')\n"
    )
    env = {
        **os.environ,
        "MODELFAB_HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests" / "serve")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path)
    url = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"http://{url}/v2/health/ready").status_code == 200, 60, "ready")
        stats = send_demo_traffic(url, ["digits", "tabular", "double"], seconds=1.0, concurrency=4)
        assert stats["requests"] > 0
        assert stats["errors"] == 0, stats["error_samples"]
        assert stats["p99_ms"] >= stats["p50_ms"] > 0
        g = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        wait_for(lambda: g.is_server_ready(), 30, "grpc")
        assert g.get_model_metadata("digits", as_json=True)["name"] == "digits"
        g.close()

        def served() -> float:
            text = httpx.get(f"http://{url}/metrics").text
            lines = text.splitlines()
            return sum(float(x.rsplit(" ", 1)[1]) for x in lines if x.startswith("modelfab_requests_total{"))

        # Both workers' counts, whichever answers the scrape (the other's within a snapshot period).
        wait_for(lambda: served() == stats["requests"], 30, "every answered request in /metrics")
        metrics = httpx.get(f"http://{url}/metrics").text
        assert "modelfab_workers 2.0" in metrics
        assert 'modelfab_requests_total{model="digits",protocol="rest",version="1"}' in metrics
        assert "modelfab_model_cpu_seconds_total" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
