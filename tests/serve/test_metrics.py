"""In-process metrics: Prometheus text that a Prometheus parser reads back, and merging across workers."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import string
import time
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import MakeServer

from modelfab.serve.metrics import METRICS_DIR_ENV, ScrapeFanout, ServeMetrics, mark_dead


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _mv(model: str = "m", **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model": model, "version": "1", **extra}.items()))


def test_render_parses_as_prometheus_text() -> None:
    m = ServeMetrics()
    m.requests.labels("m", "1", "rest").inc()
    m.requests.labels("m", "1", "rest").inc()
    for v in (0.0004, 0.003, 0.003, 20.0):
        m.latency.labels("m", "1").observe(v)
    m.loaded("m", 1, 1234, 0.002)
    m.evicted("m", 1, 1234, "lru")
    m.errors.labels("m", "1", "400").inc()
    m.workers.set(1)
    s = _samples(m.render(folder=None))
    assert s[("modelfab_requests_total", _mv(protocol="rest"))] == 2
    assert s[("modelfab_request_seconds_bucket", _mv(le="0.0005"))] == 1
    assert s[("modelfab_request_seconds_bucket", _mv(le="0.005"))] == 3  # cumulative
    assert s[("modelfab_request_seconds_bucket", _mv(le="+Inf"))] == 4
    assert s[("modelfab_request_seconds_count", _mv())] == 4
    assert s[("modelfab_request_seconds_sum", _mv())] == pytest.approx(20.0064)
    assert s[("modelfab_model_loads_total", _mv())] == 1
    assert s[("modelfab_model_evictions_total", _mv(reason="lru"))] == 1
    assert ("modelfab_model_resident_bytes", _mv()) not in s  # an unloaded model has no gauge series
    assert s[("modelfab_request_errors_total", _mv(code="400"))] == 1
    assert s[("modelfab_workers", ())] == 1
    assert s[("modelfab_model_load_seconds_count", ())] == 1


def test_label_values_are_escaped() -> None:
    m = ServeMetrics()
    m.requests.labels('we"ird\\', "1", "rest").inc()
    s = _samples(m.render(folder=None))
    assert s[("modelfab_requests_total", _mv('we"ird\\', protocol="rest"))] == 1


def test_workers_combine_through_snapshots(tmp_path: Path) -> None:
    """Counters and histograms add up over workers, dead ones included; gauges count live workers only."""
    me, other, dead = ServeMetrics(), ServeMetrics(), ServeMetrics()
    for w, n in ((me, 3), (other, 4), (dead, 5)):
        for _ in range(n):
            w.requests.labels("m", "1", "rest").inc()
            w.batch_size.labels("m", "1").observe(2)
        w.cpu_seconds.labels("m", "1").inc(0.5)
        w.workers.set(1)
        w.queue_depth.labels("m", "1").set(n)
        w.scale_events.labels("up").set(n)
    other.requests.labels("only-other", "1", "grpc").inc()
    me.write_snapshot(tmp_path)  # the scraping worker's own file is skipped: its live values count
    other.write_snapshot(tmp_path, pid=os.getpid() + 1)
    dead.write_snapshot(tmp_path, pid=os.getpid() + 2)
    mark_dead(tmp_path, os.getpid() + 2)
    me.requests.labels("m", "1", "rest").inc()  # after its snapshot: the scrape sees it anyway
    s = _samples(me.render(folder=tmp_path))
    assert s[("modelfab_requests_total", _mv(protocol="rest"))] == 3 + 1 + 4 + 5
    assert s[("modelfab_requests_total", _mv("only-other", protocol="grpc"))] == 1
    assert s[("modelfab_batch_size_bucket", _mv(le="2.0"))] == 12
    assert s[("modelfab_batch_size_sum", _mv())] == 24
    assert s[("modelfab_model_cpu_seconds_total", _mv())] == 1.5
    assert s[("modelfab_workers", ())] == 2
    assert s[("modelfab_queue_depth", _mv())] == 3 + 4
    assert s[("modelfab_scale_events", (("direction", "up"),))] == 5  # max: every worker reports the total


def test_unreadable_snapshots_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "w-1.json").write_bytes(b"{not json")
    (tmp_path / "notes.txt").write_text("x")
    m = ServeMetrics()
    m.requests.labels("m", "1", "rest").inc()
    assert _samples(m.render(folder=tmp_path))[("modelfab_requests_total", _mv(protocol="rest"))] == 1


def _other_worker(metrics: ServeMetrics, folder: Path, pid: int) -> asyncio.Task[None]:
    """What another worker's reporter does: answer scrapes with a fresh snapshot."""

    async def reporter() -> None:
        while True:
            metrics.answer_scrape(folder, pid)
            await asyncio.sleep(0.01)

    return asyncio.get_running_loop().create_task(reporter())


def test_scrape_asks_other_workers_for_fresh_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(METRICS_DIR_ENV, str(tmp_path))
    shared = [0]  # stands for the supervisor's shared array
    me, other = ServeMetrics(), ServeMetrics()
    me.fanout, other.fanout = ScrapeFanout(shared, 0), ScrapeFanout(shared, 0)
    pid = os.getpid() + 1
    other.write_snapshot(tmp_path, pid)  # at its start
    other.requests.labels("m", "1", "rest").inc(7)  # after its last snapshot
    me.requests.labels("m", "1", "rest").inc(2)

    async def scrape() -> bytes:
        task = _other_worker(other, tmp_path, pid)
        try:
            return await me.collect()
        finally:
            task.cancel()

    s = _samples(asyncio.run(scrape()))
    assert s[("modelfab_requests_total", _mv(protocol="rest"))] == 9


def test_scrape_does_not_wait_forever_for_a_stuck_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(METRICS_DIR_ENV, str(tmp_path))
    me, stuck = ServeMetrics(), ServeMetrics()
    me.fanout = ScrapeFanout([0], 0)
    me.fanout_wait_s = 0.05
    stuck.requests.labels("m", "1", "rest").inc(3)
    stuck.write_snapshot(tmp_path, os.getpid() + 1)  # never answers the scrape
    s = _samples(asyncio.run(me.collect()))
    assert s[("modelfab_requests_total", _mv(protocol="rest"))] == 3  # its last snapshot


def test_a_models_bookkeeping_is_counted_once_and_gauges_go_with_it() -> None:
    m = ServeMetrics()
    m.loaded("m", 1, 1000, 0.001)
    m.queue_depth.labels("m", "1").set(0)
    per_model = m.bookkeeping_bytes
    assert per_model > 0
    m.evicted("m", 1, 1000, "lru")
    m.queue_depth.remove("m", "1")
    m.loaded("m", 1, 1000, 0.001)  # seen before: nothing more to count
    assert m.bookkeeping_bytes == per_model
    m.loaded("n", 1, 1000, 0.001)
    assert m.bookkeeping_bytes == 2 * per_model
    m.evicted("m", 1, 1000, "lru")
    s = _samples(m.render(folder=None))
    assert ("modelfab_model_resident_bytes", _mv()) not in s
    assert ("modelfab_queue_depth", _mv()) not in s
    assert s[("modelfab_model_loads_total", _mv())] == 2  # counters stay
    assert s[("modelfab_model_bookkeeping_bytes", ())] == 2 * per_model


def test_unknown_models_and_versions_add_no_series(make_server: MakeServer) -> None:
    server = make_server(grpc=False)
    rng = random.Random(0)
    body = orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
    )

    def word() -> str:
        return "".join(rng.choices(string.ascii_letters + string.digits + "_.-", k=rng.randint(1, 40)))

    def paths() -> list[str]:
        return [
            f"/v2/models/{word()}/infer",
            f"/v2/models/{word()}/versions/{rng.randint(1, 10**9)}/infer",
            f"/v2/models/digits/versions/{rng.randint(3, 10**9)}/infer",
            f"/v2/models/digits/versions/a{word()}/infer",
            f"/v2/models/{word()}/versions/a{word()}/infer",
        ]

    with httpx.Client(base_url=f"http://{server.url}") as client:

        def sample_lines() -> int:
            text = client.get("/metrics").text
            return sum(1 for line in text.splitlines() if line and not line.startswith("#"))

        def unknown() -> float:
            samples = _samples(client.get("/metrics").content)
            return sum(v for (name, _), v in samples.items() if name == "modelfab_requests_unknown_total")

        assert client.post("/v2/models/digits/infer", content=body).status_code == 200
        for path in paths():  # each kind of unknown once: the series they count in exist from here on
            assert client.post(path, content=body).status_code in (400, 404)
        # Housekeeping publishes its gauges (queue depth, shared graphs) from its first upkeep on, about a
        # second after start: wait for it, or those series would appear during the requests below.
        for _ in range(100):
            if "\nmodelfab_shared_graphs " in client.get("/metrics").text:
                break
            time.sleep(0.05)
        before, unknown_before = sample_lines(), unknown()
        codes = collections.Counter(
            client.post(path, content=body).status_code for _ in range(200) for path in paths()
        )
        assert sum(codes.values()) == 1000 and set(codes) <= {400, 404}
        assert sample_lines() == before
        # each one is counted (400s for a malformed version are refused before the service sees them)
        assert codes[404] <= unknown() - unknown_before <= 1000
