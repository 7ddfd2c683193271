"""Two `modelfab serve` processes on one PostgreSQL registry and one artifact store: feedback for a
prediction one server made is accepted by the other, and a champion moved anywhere is served by both."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from modelfab.data import import_dataset
from modelfab.demo.server import ServerProcess, free_port, serve_args
from modelfab.factory import produce
from modelfab.recipe import parse_recipe
from modelfab.settings import Settings
from modelfab.store import Workspace
from tests.factory.test_resume import RECIPE, many_sites

MODEL = "m.s00"
ROW = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [0.4]}]}


def served_version(url: str) -> str:
    reply = httpx.post(f"http://{url}/v2/models/{MODEL}/infer", json=ROW, timeout=10)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["model_version"])


def test_two_servers_share_one_registry(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFAB_DATABASE_URL", pg_url)
    monkeypatch.setenv("MODELFAB_ARTIFACT_URL", str(tmp_path / "shared-artifacts"))
    ws = Workspace.open(Settings(home=tmp_path / "producer"))
    many_sites(tmp_path / "many.csv")
    import_dataset(ws, "many", tmp_path / "many.csv")
    produce(ws, parse_recipe(RECIPE.format(name="m", trials=1)), workers=1)
    produce(ws, parse_recipe(RECIPE.format(name="m", trials=2)), workers=1)
    assert ws.registry.resolve(MODEL) == 2
    ws.registry.set_alias(MODEL, "champion", 1, reason="start the test on version 1")
    servers = []
    try:
        for name in ("a", "b"):
            port = free_port()
            server = ServerProcess(tmp_path / name, serve_args(port, workers="1", grpc=False), port)
            server.start()
            servers.append(server)
        a, b = (s.url for s in servers)
        reply = httpx.post(f"http://{a}/v2/models/{MODEL}/infer", json=ROW, timeout=10)
        assert reply.status_code == 200 and reply.json()["model_version"] == "1"
        prediction = reply.headers["X-Prediction-Id"]
        fed = httpx.post(
            f"http://{b}/v2/feedback", json={"items": [{"id": prediction, "outcome": 1}]}, timeout=30
        )
        assert fed.status_code == 200 and fed.json() == {"accepted": 1, "unknown": []}
        unknown = httpx.post(
            f"http://{b}/v2/feedback", json={"items": [{"id": "nope", "outcome": 1}]}, timeout=30
        )
        assert unknown.json() == {"accepted": 0, "unknown": ["nope"]}

        ws.registry.set_alias(MODEL, "champion", 2, actor="ana", reason="promoted on another host")
        moved = time.monotonic()
        seen: dict[str, float] = {}
        while len(seen) < 2 and time.monotonic() - moved < 10:
            for url in (a, b):
                if url not in seen and served_version(url) == "2":
                    seen[url] = time.monotonic() - moved
            time.sleep(0.02)
        # The contract is one second; the bound here leaves room for a loaded CI machine.
        assert set(seen) == {a, b}, seen
        assert max(seen.values()) < 5.0, seen
    finally:
        for server in servers:
            server.stop()
        ws.close()
