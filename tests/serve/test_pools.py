"""Each kind of blocking work has threads of its own: slow model loads or a flood of slow feedback ingests
leave lookups and inferences of other models answering."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from serve_helpers import FakeSource, MakeServer, wait_for

from modelfab.errors import ConfigError, NotFoundError
from modelfab.serve.models.cache import INLINE_LOAD_BYTES
from modelfab.serve.models.source import WorkspaceSource, workspace_source
from modelfab.serve.options import ServeOptions
from modelfab.serve.server import DEFAULT_SOURCE
from modelfab.serve.service import InferenceService
from modelfab.serve.transport import feedback
from modelfab.serve.workers.process import open_source
from modelfab.serve.workers.supervisor import WorkerSpec
from modelfab.settings import Settings

# More than any default executor has threads (min(32, cores + 4)): enough to take all of it.
FLOOD = 40
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


class GatedSource(FakeSource):
    """Fetches of the ``slow-*`` models wait until the gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.slow: set[str] = set()
        self.waiting = 0
        self._lock = threading.Lock()

    def fetch(self, digest: str) -> bytes:
        if digest in self.slow:
            with self._lock:
                self.waiting += 1
            self.gate.wait(60)
        return super().fetch(digest)


@pytest.fixture
def gated(onnx_models: dict[str, bytes]) -> Iterator[GatedSource]:
    s = GatedSource()
    for name in ("double", "tabular"):
        s.add(name, onnx_models[name])
    for i in range(FLOOD):
        v = s.add(f"slow-{i}", onnx_models["fixed"])
        # Declared big, so it loads off the event loop, as a real big model does.
        s.versions[v.name][v.version] = dataclasses.replace(v, artifact_size=INLINE_LOAD_BYTES * 4)
        s.slow.add(v.artifact_digest)
    yield s
    s.gate.set()


def _flood(send: Callable[[], httpx.Response]) -> tuple[list[threading.Thread], list[int]]:
    codes: list[int] = []

    def one() -> None:
        try:
            codes.append(send().status_code)
        except httpx.HTTPError as exc:
            codes.append(-1)
            raise AssertionError(f"flood request failed: {exc!r}") from exc

    threads = [threading.Thread(target=one, daemon=True) for _ in range(FLOOD)]
    for t in threads:
        t.start()
    return threads, codes


def _others_answer(url: str) -> None:
    """A first lookup (uncached), the repository index and an inference of models not blocked."""
    with httpx.Client(base_url=f"http://{url}", timeout=20) as c:
        meta = c.get("/v2/models/tabular")
        assert meta.status_code == 200, meta.text
        assert meta.json()["name"] == "tabular"
        index = c.post("/v2/repository/index")
        assert index.status_code == 200
        assert {m["name"] for m in index.json()} >= {"double", "tabular"}
        r = c.post("/v2/models/double/infer", json=BODY)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [2, 4, 6, 8]


def test_slow_loads_leave_lookups_and_inferences_answering(
    make_server: MakeServer, gated: GatedSource
) -> None:
    server = make_server(src=gated, grpc=False)
    url = f"http://{server.url}"
    numbers = itertools.count()  # a model of its own per request: as many loads as requests
    threads, codes = _flood(
        lambda: httpx.post(f"{url}/v2/models/slow-{next(numbers)}/infer", json=BODY, timeout=60)
    )
    wait_for(lambda: gated.waiting >= 1, 30, "a slow load to start")
    _others_answer(server.url)
    assert codes == []  # every slow load was still stuck meanwhile
    gated.gate.set()
    for t in threads:
        t.join(60)
    assert codes == [200] * FLOOD


class _SlowStore:
    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.waiting = 0

    def ingest(self, items: list[Any]) -> Any:
        self.waiting += 1
        self.gate.wait(60)
        return SimpleNamespace(to_json=lambda: {"accepted": len(items)})


def test_a_feedback_flood_leaves_lookups_and_inferences_answering(
    make_server: MakeServer, gated: GatedSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _SlowStore(gated.gate)
    monkeypatch.setattr(feedback._LazyStore, "get", lambda self: store)
    # A SQLite URL: no background publisher of the prediction index, which this test does not need.
    settings = SimpleNamespace(resolved_database_url="sqlite://")
    server = make_server(
        ServeOptions(extra_routes=lambda _: feedback.routes(settings)), grpc=False, src=gated
    )
    url = f"http://{server.url}"
    doc = {"items": [{"id": "p-1", "outcome": 1}]}
    threads, codes = _flood(lambda: httpx.post(f"{url}/v2/feedback", json=doc, timeout=60))
    wait_for(lambda: store.waiting >= 1, 30, "a feedback ingest to start")
    _others_answer(server.url)
    assert codes == []  # the whole flood was still stuck meanwhile
    gated.gate.set()
    for t in threads:
        t.join(60)
    assert codes == [200] * FLOOD


def test_registry_connections_are_bounded_and_reported(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=pg_url)
    source = workspace_source(settings, pool_size=1, max_overflow=1)
    assert isinstance(source, WorkspaceSource)
    engine = source.workspace.engine
    service = InferenceService(source, ServeOptions(), worker="3")

    def gauges() -> tuple[float | None, float | None]:
        service.refresh_gauges()
        text = service.metrics.render().decode()
        found = {}
        for state in ("open", "checked_out"):
            head = f'modelfab_db_connections{{pool="registry",state="{state}",worker="3"}} '
            found[state] = next(
                (float(x[len(head) :]) for x in text.splitlines() if x.startswith(head)), None
            )
        return found["open"], found["checked_out"]

    try:
        with pytest.raises(NotFoundError):
            source.resolve("nope", None)  # a real query: one connection opened, back in the pool
        assert gauges() == (1.0, 0.0)
        held = [engine.connect(), engine.connect()]  # the pool and its one overflow connection
        assert gauges() == (2.0, 2.0)
        errors: list[BaseException] = []

        def lookup() -> None:
            try:
                source.resolve("nope", None)
            except BaseException as exc:
                errors.append(exc)

        waiting = threading.Thread(target=lookup)
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive()  # a third connection is not opened: the lookup waits for one
        held.pop().close()
        waiting.join(30)
        assert [type(e) for e in errors] == [NotFoundError]
        held.pop().close()
        assert gauges() == (1.0, 0.0)  # the overflow connection is closed once returned
    finally:
        service.pools.close()
        source.workspace.close()


def test_the_serve_options_bound_the_default_source(tmp_path: Path, pg_url: str) -> None:
    settings = Settings(home=tmp_path / "home", database_url=pg_url)
    options = ServeOptions(db_pool_size=3, db_max_overflow=0)
    spec = WorkerSpec(settings, "127.0.0.1", 0, None, options, DEFAULT_SOURCE)
    source = open_source(spec)
    assert isinstance(source, WorkspaceSource)
    try:
        assert source.workspace.engine.pool.size() == 3
    finally:
        source.workspace.close()
    with pytest.raises(ConfigError, match="pool"):
        workspace_source(settings, pool_size=0)
