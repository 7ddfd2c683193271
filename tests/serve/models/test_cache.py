"""The byte-bounded LRU: eviction choice as a pure function, then the cache with real models."""

from __future__ import annotations

import asyncio

import pytest
from serve_helpers import FakeSource

from modelfab.errors import OverloadedError, UnavailableError
from modelfab.serve.models.cache import Candidate, ModelCache, choose_evictions, idle_keys, trim_heap
from modelfab.serve.models.runtime import session_overhead_bytes
from modelfab.serve.types import InferRequest


def c(name: str, size: int, last_used: float, busy: bool = False) -> Candidate:
    return Candidate((name, 1), size, last_used, busy)


@pytest.mark.parametrize(
    ("entries", "used", "budget", "incoming", "expected"),
    [
        ([], 0, 100, 50, []),
        ([c("a", 40, 1)], 40, 100, 50, []),
        ([c("a", 40, 1), c("b", 40, 2)], 80, 100, 30, ["a"]),
        ([c("a", 40, 2), c("b", 40, 1)], 80, 100, 30, ["b"]),
        ([c("a", 40, 1, busy=True), c("b", 40, 2)], 80, 100, 30, ["b"]),
        ([c("a", 10, 1), c("b", 10, 2), c("c", 70, 3)], 90, 100, 30, ["a", "b"]),
        ([c("a", 40, 1, busy=True), c("b", 40, 2, busy=True)], 80, 100, 30, None),
        ([c("a", 40, 1)], 40, 100, 200, None),
    ],
)
def test_choose_evictions(
    entries: list[Candidate], used: int, budget: int, incoming: int, expected: list[str] | None
) -> None:
    got = choose_evictions(entries, used, budget, incoming)
    assert (None if got is None else [k[0] for k in got]) == expected


def test_idle_keys() -> None:
    entries = [c("old", 1, 0.0), c("busy", 1, 0.0, busy=True), c("fresh", 1, 95.0)]
    assert idle_keys(entries, now=100.0, ttl=10.0) == [("old", 1)]
    assert idle_keys(entries, now=1e12, ttl=0.0) == []  # 0: never


def _budget_for(source: FakeSource, models: int) -> int:
    biggest = max(v.artifact_size for vs in source.versions.values() for v in vs.values())
    return models * (biggest + session_overhead_bytes) + 1


def test_lru_never_evicts_models_in_flight(source: FakeSource) -> None:
    async def scenario() -> None:
        cache = ModelCache(source.fetch, _budget_for(source, 2))
        d1, d2 = source.resolve("digits", 1), source.resolve("digits", 2)
        types, double = source.resolve("types", None), source.resolve("double", None)
        async with cache.use(d1):  # held: a request in flight
            async with cache.use(d2):
                pass
            async with cache.use(types):  # must evict digits v2, not the busy v1
                assert cache.is_loaded("digits", 1)
                assert not cache.is_loaded("digits", 2)
                with pytest.raises(OverloadedError):  # both residents busy: no room
                    async with cache.use(double):
                        pass
            assert cache.used <= cache.budget
        async with cache.use(double):  # now digits v1 is idle and least recently used... types is older
            pass
        assert cache.is_loaded("double", 1)
        assert len(cache.loaded()) == 2
        assert cache.used <= cache.budget

    asyncio.run(scenario())


def test_concurrent_first_requests_load_once(source: FakeSource) -> None:
    async def scenario() -> None:
        cache = ModelCache(source.fetch, 1 << 30)
        info = source.resolve("digits", None)

        async def one() -> None:
            async with cache.use(info) as model:
                assert model.name == "digits"

        await asyncio.gather(*(one() for _ in range(20)))

    before = source.fetches
    asyncio.run(scenario())
    assert source.fetches - before == 1


def test_pinned_models_stay_and_unload_drops(source: FakeSource) -> None:
    async def scenario() -> None:
        cache = ModelCache(source.fetch, _budget_for(source, 2))
        await cache.load(source.resolve("tabular", None), pin=True)
        for ref in ("types", "double", "fixed"):
            async with cache.use(source.resolve(ref, None)):
                pass
        assert cache.is_loaded("tabular", 1)
        assert cache.sweep(ttl=0.0, now=1e12) == []  # 0: never unload for idleness
        assert cache.is_loaded("fixed", 1)
        assert cache.sweep(ttl=1.0, now=1e12) == [("fixed", 1)]  # idle TTL spares the pinned model
        assert cache.unload("tabular") == 1
        assert cache.loaded() == []
        assert cache.used == 0

    asyncio.run(scenario())


def test_model_bigger_than_budget_is_unavailable(source: FakeSource) -> None:
    async def scenario() -> None:
        cache = ModelCache(source.fetch, 1000)
        with pytest.raises(UnavailableError, match="raise --max-memory"):
            async with cache.use(source.resolve("digits", None)):
                pass

    asyncio.run(scenario())


def test_digest_mismatch_is_refused_and_not_retried_at_once(source: FakeSource) -> None:
    async def scenario() -> None:
        cache = ModelCache(source.fetch, 1 << 30)
        info = source.resolve("broken", None)
        for _ in range(3):
            with pytest.raises(UnavailableError, match="sha256"):
                async with cache.use(info):
                    pass
        assert cache.loaded() == []

    before = source.fetches
    asyncio.run(scenario())
    assert source.fetches - before == 1


def test_evicted_model_is_freed_at_once(source: FakeSource) -> None:
    """Eviction drops the session by reference counting, not at a later full garbage collection (a pass
    that stalls the event loop for tens of milliseconds with thousands of models)."""
    import gc
    import weakref

    from modelfab.serve.options import ServeOptions
    from modelfab.serve.service import InferenceService
    from modelfab.serve.transport.codec_rest import decode_request

    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}'

    async def decode() -> InferRequest:
        return decode_request(body, None)

    async def scenario() -> None:
        service = InferenceService(
            source, ServeOptions(max_memory_bytes=_budget_for(source, 1), log_predictions=False)
        )
        await service.start()
        try:
            await service.infer("double", None, decode)
            _, model = await service.model("double", None)
            ref = weakref.ref(model)
            del model
            await service.infer("fixed", None, decode)  # evicts double
            assert not service.cache.is_loaded("double", 1)
            assert ref() is None
        finally:
            await service.stop()

    gc.disable()
    try:
        asyncio.run(scenario())
    finally:
        gc.enable()


def test_a_slow_load_does_not_stall_other_models(source: FakeSource) -> None:
    """A model that is not small loads in a thread: while its artifact is still being fetched, requests
    for models already loaded keep being answered."""
    import threading
    from dataclasses import replace
    from typing import Any

    from modelfab.serve.models.cache import INLINE_LOAD_BYTES
    from modelfab.serve.options import ServeOptions
    from modelfab.serve.service import InferenceService
    from modelfab.serve.transport.codec_rest import decode_request

    gate = threading.Event()
    slow_digest = source.resolve("tabular", None).artifact_digest

    class SlowStore:
        def resolve(self, name: str, ref: str | int | None) -> Any:
            v = source.resolve(name, ref)
            return replace(v, artifact_size=INLINE_LOAD_BYTES) if name == "tabular" else v

        def fetch(self, digest: str) -> bytes:
            if digest == slow_digest:
                gate.wait(30)
            return source.fetch(digest)

        def index(self) -> Any:
            return source.index()

    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}'

    async def decode() -> InferRequest:
        return decode_request(body, None)

    async def scenario() -> None:
        service = InferenceService(SlowStore(), ServeOptions(log_predictions=False))
        await service.start()
        try:
            await service.infer("double", None, decode)
            slow = asyncio.create_task(service.model("tabular", None))
            await asyncio.sleep(0)  # let it start loading
            for _ in range(20):
                resp, _ = await service.infer("double", None, decode)
                assert resp.outputs["y"].tolist() == [[2, 4, 6, 8]]
            assert not slow.done()  # still waiting for its artifact
            gate.set()
            info, model = await slow
            assert info.name == "tabular" and model.inputs
        finally:
            gate.set()
            await service.stop()

    asyncio.run(scenario())


def test_bookkeeping_overhead_counts_in_the_budget(source: FakeSource) -> None:
    async def scenario() -> None:
        overhead = [0]
        cache = ModelCache(source.fetch, _budget_for(source, 2), overhead=lambda: overhead[0])
        d1, d2 = source.resolve("digits", 1), source.resolve("digits", 2)
        async with cache.use(d1):
            pass
        async with cache.use(d2):
            pass
        assert len(cache.loaded()) == 2
        overhead[0] = cache.budget // 3  # bookkeeping of models seen takes a third of the budget
        async with cache.use(source.resolve("types", None)):
            pass
        assert len(cache.loaded()) == 1  # the two others made room
        assert cache.used + overhead[0] <= cache.budget
        overhead[0] = cache.budget  # nothing left for any model: refused, saying why
        with pytest.raises(UnavailableError, match="bookkeeping"):
            async with cache.use(d1):
                pass

    asyncio.run(scenario())


def test_trim_heap_is_harmless() -> None:
    assert trim_heap() in (True, False)
    assert trim_heap() in (True, False)  # the library is looked up once
