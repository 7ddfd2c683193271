"""The iteration loop's hooks: deployment routing (canary, shadow, sticky keys), extra routes, alias moves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hook_fakes
import httpx
import numpy as np
import pytest
from hook_fakes import ROUTERS, FakeRouter
from serve_helpers import FakeSource, MakeServer, wait_for

from modelfab.errors import NotFoundError
from modelfab.serve.models.source import CachedSource, Lookup
from modelfab.serve.options import ServeOptions
from modelfab.traffic.predlog import read_predictions

ROW = np.linspace(0, 1, 64, dtype=np.float32).tolist()
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}]}
ROUTED = ServeOptions(router_factory=hook_fakes.make_router, extra_routes=hook_fakes.routes)


def _infer(url: str, path: str = "/v2/models/digits/infer", **kw: Any) -> httpx.Response:
    r = httpx.post(f"http://{url}{path}", json=kw.pop("json", BODY), **kw)
    assert r.status_code == 200, r.text
    return r


def _router() -> FakeRouter:
    return ROUTERS[-1]


def test_router_picks_the_version_and_the_log_records_it(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(ROUTED, grpc=False)
    plain = _infer(server.url)
    canary = _infer(server.url, headers={"X-Request-Key": "canary-7"})
    by_param = _infer(server.url, json={**BODY, "parameters": {"request_key": "canary-9"}})
    assert plain.json()["model_version"] == "1"
    assert canary.json()["model_version"] == "2"
    assert by_param.json()["model_version"] == "2"
    assert _router().calls == [("digits", None), ("digits", "canary-7"), ("digits", "canary-9")]
    logged = {r["id"]: r for r in read_predictions(tmp_path)}
    pid = canary.headers["x-prediction-id"]
    assert logged[pid]["version"] == 2
    assert logged[pid]["request_key"] == "canary-7"
    assert logged[pid]["shadow"] is False
    assert logged[plain.headers["x-prediction-id"]]["version"] == 1


def test_explicit_versions_and_other_aliases_bypass_the_router(make_server: MakeServer) -> None:
    server = make_server(ROUTED, grpc=False)
    key = {"X-Request-Key": "canary-1"}
    assert (
        _infer(server.url, "/v2/models/digits/versions/1/infer", headers=key).json()["model_version"] == "1"
    )
    challenger = _infer(server.url, "/v2/models/digits/versions/challenger/infer", headers=key)
    assert challenger.json()["model_version"] == "2"
    champion = _infer(server.url, "/v2/models/digits/versions/champion/infer", headers=key)
    assert champion.json()["model_version"] == "2"  # champion is routed like no version
    assert _router().calls == [("digits", "canary-1")]


def test_shadow_version_scores_for_the_log_only(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(ROUTED, grpc=False)
    r = _infer(server.url, headers={"X-Request-Key": "shadow"})
    assert r.json()["model_version"] == "1"
    pid = r.headers["x-prediction-id"]

    def records() -> list[dict[str, Any]]:
        return [rec for rec in read_predictions(tmp_path) if rec["id"] == pid]

    wait_for(lambda: len(records()) == 2, 10, "the shadow record")
    by_flag = {rec["shadow"]: rec for rec in records()}
    assert by_flag[False]["version"] == 1
    assert by_flag[True]["version"] == 2
    assert by_flag[True]["outputs"].keys() == by_flag[False]["outputs"].keys()


def test_a_router_that_fails_to_start_stops_the_service_with_its_error(make_server: MakeServer) -> None:
    # Before, a failing hook was logged and the server ran on without canary routing: a canary the loop
    # started then silently served nobody. Now the worker does not start, and the supervisor says why.
    with pytest.raises(RuntimeError, match="no database here"):
        make_server(ServeOptions(router_factory=hook_fakes.broken_router), grpc=False)


def test_no_plugins_mean_plain_serving(make_server: MakeServer) -> None:
    server = make_server(ServeOptions(router_factory=None, extra_routes=None, extra_metrics=None), grpc=False)
    assert server.service.router is None and server.service.extra_routes == []
    assert _infer(server.url, headers={"X-Request-Key": "canary-1"}).json()["model_version"] == "1"
    assert httpx.post(f"http://{server.url}/v2/feedback", content=b"{}").status_code == 404


def test_extra_routes_are_mounted_with_oip_errors(make_server: MakeServer) -> None:
    server = make_server(ROUTED, grpc=False)
    ok = httpx.post(f"http://{server.url}/v2/feedback", content=b'{"id": "x"}')
    assert ok.status_code == 200
    assert ok.json() == {"accepted": 1}
    bad = httpx.post(f"http://{server.url}/v2/feedback", content=b"nope")
    assert bad.status_code == 400
    assert bad.json() == {"error": "feedback body must be a JSON object"}


def test_an_alias_move_reaches_a_running_server(
    make_server: MakeServer, source: FakeSource, onnx_models: dict[str, bytes]
) -> None:
    server = make_server(grpc=False)
    assert _infer(server.url).json()["model_version"] == "1"
    source.add("digits", onnx_models["digits2"])  # version 3 becomes champion
    # How fast it arrives (about the 0.5 s lookup TTL) is bench/scale.py's to show, not a test's.
    wait_for(lambda: _infer(server.url).json()["model_version"] == "3", 30, "the new champion")


class _Watched:
    """A source with a generation counter, like the workspace's alias history."""

    def __init__(self, inner: FakeSource) -> None:
        self.inner = inner
        self.gen = 0
        self.resolves = 0

    def resolve(self, name: str, ref: str | int | None) -> Any:
        self.resolves += 1
        return self.inner.resolve(name, ref)

    def fetch(self, digest: str) -> bytes:
        return self.inner.fetch(digest)

    def index(self) -> list[Any]:
        return list(self.inner.index())

    def generation(self) -> int:
        return self.gen


def test_lookups_are_kept_until_the_generation_moves(
    source: FakeSource, onnx_models: dict[str, bytes]
) -> None:
    now = [0.0]
    watched = _Watched(source)
    cached = CachedSource(watched, ttl=0.5, clock=lambda: now[0])
    assert cached.watches_changes
    cached.check_changes()
    assert cached.resolve("digits", None).version == 1
    now[0] = 60.0  # far past the TTL: still cached, nothing moved
    assert cached.resolve("digits", None).version == 1
    assert watched.resolves == 1
    source.add("digits", onnx_models["digits2"])
    assert not cached.check_changes()  # same generation: the old answer stays
    assert cached.resolve("digits", None).version == 1
    watched.gen += 1
    assert cached.check_changes()
    assert cached.resolve("digits", None).version == 3
    assert watched.resolves == 2


def test_prewarm_resolves_every_champion_from_one_index_read(source: FakeSource) -> None:
    watched = _Watched(source)
    cached = CachedSource(watched, ttl=0.5)
    others = [name for name in source.versions if name != "digits"]
    assert cached.prewarm() == len(others)
    for name in others:
        assert cached.is_fresh(name, None) and cached.is_fresh(name, "champion")
        got, want = cached.resolve(name, None), source.resolve(name, None)
        assert (got.name, got.version, got.artifact_digest) == (want.name, want.version, want.artifact_digest)
    assert watched.resolves == 0
    # digits' latest version is the challenger, not the champion: looked up on demand, as before
    assert not cached.is_fresh("digits", None)
    assert cached.resolve("digits", None).version == 1
    assert watched.resolves == 1


def test_extra_metrics_join_the_servers_own_and_a_failure_does_not_break_them(
    make_server: MakeServer,
) -> None:
    server = make_server(ServeOptions(extra_metrics=hook_fakes.metrics), grpc=False)
    _infer(server.url)
    text = httpx.get(f"http://{server.url}/metrics").text
    assert 'modelfab_online_metric{model="digits",version="1"} 0.5' in text
    assert "modelfab_requests_total" in text
    broken = make_server(ServeOptions(extra_metrics=hook_fakes.broken_metrics), grpc=False)
    reply = httpx.get(f"http://{broken.url}/metrics")
    assert reply.status_code == 200 and "modelfab_online_metric" not in reply.text


def test_cached_answers_only_fresh_found_lookups(source: FakeSource) -> None:
    now = [0.0]
    cached = CachedSource(source, ttl=0.5, clock=lambda: now[0])
    assert cached.cached("digits", None) is None  # never looked up
    found = cached.resolve("digits", 1)
    assert cached.cached("digits", 1) == found
    with pytest.raises(NotFoundError):
        cached.resolve("nope", None)
    assert cached.cached("nope", None) is None  # a cached 'not found' still goes through resolve
    now[0] = 1.0
    assert cached.cached("digits", 1) is None  # expired


def test_lookup_cache_is_bounded_and_keeps_compact_records(source: FakeSource) -> None:
    cached = CachedSource(source, ttl=60.0, max_entries=2)
    names = list(source.versions)
    assert len(names) >= 3
    for name in names:
        info = cached.resolve(name, None)
        assert isinstance(info, Lookup) and info.name == name
        assert info.serving == source.resolve(name, None).serving
    assert len(cached._cache) == 2  # the oldest lookups went first
    assert not cached.is_fresh(names[0], None) and cached.is_fresh(names[-1], None)
    # champion and no version are one lookup
    assert cached.is_fresh(names[-1], "champion")
    assert cached.cached(names[-1], "champion") is cached.cached(names[-1], None)
    assert cached.prewarm() <= 2 and len(cached._cache) == 2


def test_not_found_lookups_are_few_and_hold_no_exceptions(source: FakeSource) -> None:
    cached = CachedSource(source, ttl=60.0, max_missing=8)
    for i in range(100):
        with pytest.raises(NotFoundError):
            cached.resolve(f"nosuch-{i}", None)
    assert len(cached._missing) == 8  # the newest probes only
    assert all(isinstance(message, str) for _, message in cached._missing.values())
    assert cached.is_fresh("nosuch-99", None) and not cached.is_fresh("nosuch-0", None)
    with pytest.raises(NotFoundError, match="nosuch-99"):
        cached.resolve("nosuch-99", None)  # answered from the cache
    assert cached.resolve("digits", None).version == 1
    cached.invalidate()
    assert not cached._missing and not cached.is_fresh("nosuch-99", None)
