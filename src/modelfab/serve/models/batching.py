"""Adaptive batching: requests for one model that arrive together run as one ONNX Runtime call.

A batch closes when it holds ``max_batch_size`` rows, or at ``max_wait`` after its first request, or as soon
as no further request for the model is on its way (``incoming`` counts requests whose bodies are still being
read and decoded). So a lone request never waits, and under load batches form both from requests that queued
while the previous batch ran and from requests about to arrive.

Small models run inline on the event loop, from one callback scheduled when the first request of a batch is
queued: it runs after the other requests that became ready in the same loop iteration have queued theirs, so
they share the ONNX Runtime call, with no task, no thread hop and no timer per batch. Models that run longer
go to the executor from a task. Request timeouts are checked by :meth:`Batcher.expire`, called periodically,
rather than by a timer per request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelfab.errors import OverloadedError
from modelfab.serve.models.runtime import SMALL_MODEL_BYTES, OnnxModel
from modelfab.serve.types import Array

__all__ = ["Batcher", "Item", "split_rows"]


@dataclass(slots=True)
class Item:
    feeds: dict[str, Array]
    rows: int
    outputs: tuple[str, ...] | None
    future: asyncio.Future[dict[str, Array]]
    context: Any = None
    enqueued: float = field(default_factory=time.monotonic)

    def signature(self) -> tuple[Any, ...]:
        return (self.outputs, *((k, a.dtype.str, a.shape[1:]) for k, a in sorted(self.feeds.items())))


def split_rows(outputs: dict[str, Array], counts: Sequence[int]) -> list[dict[str, Array]] | None:
    """Split batched outputs back per request; None when an output is not batched along dimension 0."""
    total = sum(counts)
    parts: list[dict[str, Array]] = [{} for _ in counts]
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            return None
        start = 0
        for part, n in zip(parts, counts, strict=True):
            part[name] = array[start : start + n]
            start += n
    return parts


def _groups(batch: list[Item]) -> list[list[Item]]:
    """Items that can share one run: same requested outputs, input dtypes and row shapes."""
    if len(batch) == 1:
        return [batch]
    groups: dict[tuple[Any, ...], list[Item]] = {}
    for item in batch:
        groups.setdefault(item.signature(), []).append(item)
    return list(groups.values())


def _settle(group: list[Item], results: Sequence[dict[str, Array] | BaseException]) -> None:
    for item, result in zip(group, results, strict=True):
        if not item.future.done():
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)


def _fail(group: list[Item], exc: BaseException) -> None:
    for item in group:
        if not item.future.done():
            item.future.set_exception(exc)


AfterRun = Callable[[Sequence[Item], Sequence[dict[str, Array]]], None]
OnBatch = Callable[[int, int, float], None]


class Batcher:
    """Queue and batch loop for one loaded model version."""

    def __init__(
        self,
        model: OnnxModel,
        executor: Executor,
        *,
        max_batch_size: int = 64,
        max_wait: float = 0.002,
        queue_size: int = 256,
        after_run: AfterRun | None = None,
        on_batch: OnBatch | None = None,
    ) -> None:
        self.model = model
        self.max_batch_size = max(1, max_batch_size) if model.batchable else 1
        self.max_wait = max(0.0, max_wait)
        self.queue_size = queue_size
        self.incoming = 0
        self._executor = executor
        self._after_run = after_run
        self._on_batch = on_batch
        self._queue: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._running: list[Item] = []  # the group in the executor now
        # Mean wall time of a run; runs this short go inline on the event loop, where a thread hop would
        # cost more than the run itself. Small models start inline (with many models most batchers are
        # new); a slow first run moves the model to the thread pool from then on.
        self.inline_below = 0.0005
        self.run_seconds = 0.0 if model.resident_bytes < SMALL_MODEL_BYTES else 1.0
        self._measured = False
        # The loop this batcher serves, taken at the first request: ``asyncio.get_running_loop`` makes a
        # getpid system call on every call (3% of a tiny model's request in a profile).
        self._event_loop: asyncio.AbstractEventLoop | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(
        self, feeds: dict[str, Array], rows: int, outputs: tuple[str, ...] | None, context: Any = None
    ) -> dict[str, Array]:
        """Queue a request and wait for its outputs; raises TimeoutError when :meth:`expire` gives up."""
        if len(self._queue) >= self.queue_size:
            raise OverloadedError(
                f"model {self.model.name} has {len(self._queue)} requests queued; retry shortly",
                retry_after=1.0,
            )
        loop = self._event_loop
        if loop is None:
            loop = self._event_loop = asyncio.get_running_loop()
        item = Item(feeds, rows, outputs, loop.create_future(), context, time.monotonic())
        self._queue.append(item)
        if self._task is not None:
            self._wake.set()
        elif self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        return await item.future

    def expire(self, timeout: float, now: float | None = None) -> int:
        """Fail requests queued or running for more than ``timeout`` seconds with TimeoutError; returns how
        many. A run that is late still finishes (a thread cannot be stopped), its answer goes nowhere."""
        if not self._queue and not self._running:
            return 0
        cutoff = (time.monotonic() if now is None else now) - timeout
        late = 0
        for item in (*self._running, *self._queue):
            if item.enqueued < cutoff and not item.future.done():
                item.future.set_exception(TimeoutError())
                late += 1
        return late

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    def _inline(self) -> bool:
        return self.run_seconds < self.inline_below

    def _flush(self) -> None:
        """Run what is queued on the loop thread, or hand it to the batch task (slow model, or requests
        still being decoded that a batch should wait for)."""
        self._flush_handle = None
        while self._queue and self._task is None:
            if not self._inline() or self.incoming > 0:
                self._task = (self._event_loop or asyncio.get_running_loop()).create_task(
                    self._loop(), name=f"batcher {self.model.name}"
                )
                return
            batch = self._take(self._full() or len(self._queue))
            for group in _groups(batch) if batch else ():
                started = time.perf_counter()
                try:
                    results = self._run(group)
                except BaseException as exc:
                    _fail(group, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self._measure((time.perf_counter() - started) / len(group))
                _settle(group, results)

    async def _loop(self) -> None:
        # Ends when the queue is empty (``submit`` schedules a flush again): an idle batcher holds no task,
        # so an evicted model is freed at once by reference counting, not at the next full collection.
        try:
            while self._queue:
                batch = await self._collect()
                if batch:
                    await self._dispatch(batch)
        finally:
            self._task = None

    def _full(self) -> int:
        """How many queued items make a full batch; 0 when all of them do not."""
        rows = 0
        for n, item in enumerate(self._queue):
            rows += item.rows
            if rows >= self.max_batch_size:
                return n + 1
        return 0

    async def _collect(self) -> list[Item]:
        first = self._queue[0]
        deadline = first.enqueued + self.max_wait
        while True:
            n = self._full()
            if n:
                return self._take(n)
            remaining = deadline - time.monotonic()
            if self.incoming <= 0 or remaining <= 0:
                return self._take(len(self._queue))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                pass

    def _take(self, n: int) -> list[Item]:
        out = [self._queue.popleft() for _ in range(n)]
        return [i for i in out if not i.future.done()]  # skip requests that timed out while queued

    async def _dispatch(self, batch: list[Item]) -> None:
        loop = asyncio.get_running_loop()
        for group in _groups(batch):
            self._running = group
            try:
                started = time.perf_counter()
                if self._inline():
                    results = self._run(group)
                else:
                    results = await loop.run_in_executor(self._executor, self._run, group)
                self._measure((time.perf_counter() - started) / len(group))
            except BaseException as exc:
                _fail(group, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            finally:
                self._running = []
            _settle(group, results)

    def _measure(self, took: float) -> None:
        self.run_seconds = took if not self._measured else 0.8 * self.run_seconds + 0.2 * took
        self._measured = True

    def _run(self, group: list[Item]) -> list[dict[str, Array] | BaseException]:
        """One ONNX Runtime call for the group, then the after-run hook (on the loop or in the executor)."""
        cpu = time.thread_time()
        outputs = group[0].outputs
        results: list[dict[str, Array] | BaseException] = []
        parts: list[dict[str, Array]] | None = None
        if len(group) > 1:
            feeds = {k: np.concatenate([i.feeds[k] for i in group]) for k in group[0].feeds}
            try:
                parts = split_rows(self.model.run(feeds, outputs), [i.rows for i in group])
            except Exception:
                parts = None  # one bad request spoils a batch: rerun singly so only it fails
        if parts is not None:
            results.extend(parts)
        else:
            for item in group:
                try:
                    results.append(self.model.run(item.feeds, outputs))
                except Exception as exc:
                    results.append(exc)
        if self._after_run is not None:
            if parts is not None:
                self._after_run(group, parts)
            else:
                ok = [(i, r) for i, r in zip(group, results, strict=True) if not isinstance(r, BaseException)]
                if ok:
                    self._after_run([i for i, _ in ok], [r for _, r in ok])
        if self._on_batch is not None:
            self._on_batch(sum(i.rows for i in group), len(group), time.thread_time() - cpu)
        return results
