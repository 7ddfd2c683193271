"""The model memory of the server divided among its running workers, rebalanced on scale events."""

from __future__ import annotations

import asyncio
import os
from multiprocessing.connection import Connection
from typing import Any

import pytest
from serve_helpers import FakeSource

from modelfab.serve.models.cache import CacheEvents, ModelCache
from modelfab.serve.workers.autoscale import ScalePolicy, worker_budget
from modelfab.serve.workers.supervisor import Supervisor, WorkerSpec


@pytest.mark.parametrize(
    ("total", "running", "expected"),
    [
        (1200, 1, 1200),  # one worker of an idle server has all of it
        (1200, 3, 400),
        (1000, 3, 333),  # never more than the total together
        (1200, 0, 1200),  # between a crash and its restart
    ],
)
def test_worker_budget(total: int, running: int, expected: int) -> None:
    assert worker_budget(total, running) == expected


def test_a_smaller_budget_unloads_least_recently_used_idle_models(source: FakeSource) -> None:
    sizes: dict[tuple[str, int], int] = {}

    class Sizes(CacheEvents):
        def loaded(self, name: str, version: int, size: int, seconds: float) -> None:
            sizes[(name, version)] = size

    async def scenario() -> tuple[list[Any], list[Any]]:
        cache = ModelCache(source.fetch, 1 << 30, events=Sizes())
        for name in ("double", "fixed", "tabular"):
            async with cache.use(source.resolve(name, None)):
                pass
        await cache.load(source.resolve("digits", None), pin=True)
        # Room for all but the least recently used unpinned model.
        dropped = cache.resize(cache.used - sizes[("double", 1)])
        return dropped, cache.loaded()

    dropped, loaded = asyncio.run(scenario())
    assert dropped == [("double", 1)]
    assert loaded == [("fixed", 1), ("tabular", 1), ("digits", 1)]


def test_pinned_and_busy_models_stay_when_the_budget_cannot_hold_them(source: FakeSource) -> None:
    async def scenario() -> list[Any]:
        cache = ModelCache(source.fetch, 1 << 30)
        await cache.load(source.resolve("double", None), pin=True)
        async with cache.use(source.resolve("fixed", None)):
            async with cache.use(source.resolve("tabular", None)):
                pass
            cache.resize(1)
            assert cache.budget == 1
            return cache.loaded()

    assert asyncio.run(scenario()) == [("double", 1), ("fixed", 1)]


class _FakeProcess:
    def __init__(self, args: tuple[Any, ...]) -> None:
        self._given = args[4]
        self.pid = 1000 + args[1]
        self.sentinel = -1
        self.terminated = False

    def start(self) -> None:
        # A real child gets its own copy of its end of the pipe; the supervisor then closes its own.
        self.conn = Connection(os.dup(self._given.fileno()))

    def is_alive(self) -> bool:
        return not self.terminated

    def terminate(self) -> None:
        self.terminated = True


class _Context:
    def __init__(self) -> None:
        self.started: list[_FakeProcess] = []

    def Process(self, *, args: tuple[Any, ...], **_: object) -> _FakeProcess:  # multiprocessing's name
        p = _FakeProcess(args)
        self.started.append(p)
        return p


class _Scaler:
    def __init__(self) -> None:
        self.want = 1

    def observe(self, current: int, inflight_total: float) -> int:
        return self.want


def test_scale_events_rebalance_every_workers_budget() -> None:
    spec = WorkerSpec(
        settings=None,
        host="127.0.0.1",
        port=0,
        grpc_port=None,
        options=None,
        source_factory="x:y",
        memory_bytes=1200,
    )
    sup = Supervisor(spec, 1, policy=ScalePolicy(min_workers=1, max_workers=4))
    ctx = _Context()
    sup._ctx = ctx  # type: ignore[assignment]
    sup._start(0)
    w0 = ctx.started[0].conn
    assert w0.recv() == ("budget", 1200)  # alone, the first worker has all of it
    scaler = _Scaler()
    scaler.want = 3
    sup._autoscale(scaler)  # type: ignore[arg-type]
    assert w0.recv() == ("budget", 400)
    assert [p.conn.recv() for p in ctx.started[1:]] == [("budget", 400)] * 2
    scaler.want = 2
    sup._autoscale(scaler)  # type: ignore[arg-type]
    assert ctx.started[2].terminated
    assert [p.conn.recv() for p in ctx.started[:2]] == [("budget", 600)] * 2
    assert _closed(ctx.started[2].conn)  # the retired worker was told nothing more


def _closed(conn: Any) -> bool:
    try:
        conn.recv()
    except EOFError:
        return True
    return False
