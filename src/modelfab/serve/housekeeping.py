"""A worker's background duties besides answering: noticing alias moves, unloading idle models, handing
freed memory back, sweeping batchers, and failing requests past their deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING

from modelfab.serve.models.cache import trim_heap

if TYPE_CHECKING:
    from modelfab.serve.service import InferenceService

__all__ = ["Housekeeper"]

log = logging.getLogger("modelfab.serve")


class Housekeeper:
    def __init__(self, service: InferenceService) -> None:
        self._s = service
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()  # set when the registry announces an alias move
        self._listen_stop = threading.Event()
        self._trimmed_at = 0

    def start(self) -> None:
        s = self._s
        loop = asyncio.get_running_loop()
        if s.source.watches_changes:
            # PostgreSQL tells us about alias moves at once; the poll below stays as the fallback.
            def wake() -> None:
                loop.call_soon_threadsafe(self._wake.set)

            s.source.listen(wake, self._listen_stop)
        self._tasks = [
            asyncio.create_task(self._housekeeping()),
            asyncio.create_task(self._watch_deadlines()),
        ]

    async def stop(self) -> None:
        self._listen_stop.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _prewarm_lookups(self) -> None:
        try:
            await asyncio.to_thread(self._s.source.prewarm)
        except Exception as exc:  # lookups then happen one by one, as without it
            log.warning("cannot read the model index to prewarm lookups: %s", exc)

    async def _housekeeping(self) -> None:
        s = self._s
        ticks = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), s.options.resolve_ttl_s)
            self._wake.clear()
            if s.source.watches_changes:
                try:
                    # The first check always reports a change: that is when lookups are first prewarmed.
                    if await asyncio.to_thread(s.source.check_changes):
                        await self._prewarm_lookups()
                except Exception as exc:  # a database blip must not stop housekeeping
                    log.warning("cannot check the registry for alias changes: %s", exc)
            ticks += 1
            if ticks * s.options.resolve_ttl_s < 1.0:
                continue
            ticks = 0
            s.cache.sweep(s.options.idle_ttl_s)
            if s.cache.shared is not None:
                s.metrics.shared_graphs.set(len(s.cache.shared))
                s.metrics.shared_graph_bytes.set(s.cache.shared.resident_bytes)
            if s.cache.drops != self._trimmed_at:
                # Sessions of evicted models free many small blocks that glibc keeps; hand them back (in a
                # thread: a trim of a large heap takes milliseconds, and it drops the GIL).
                self._trimmed_at = s.cache.drops
                await asyncio.to_thread(trim_heap)
            s.batchers.sweep(s.cache.is_loaded)

    async def _watch_deadlines(self) -> None:
        """Fail requests waiting longer than the request timeout: one periodic check for all of them is
        cheaper than a timer per request, and a timeout a few percent late is still a timeout."""
        timeout = self._s.options.request_timeout_s
        every = min(0.5, max(0.01, timeout / 20))
        while True:
            await asyncio.sleep(every)
            self._s.batchers.expire(timeout)
