"""Adaptive batching: requests for one model that arrive together run as one ONNX Runtime call.

A batch closes when it holds ``max_batch_size`` rows, or at ``max_wait`` after its first request, or as soon
as no further request for the model is on its way (``incoming`` counts requests whose bodies are still being
read and decoded). So a lone request never waits, and under load batches form both from requests that queued
while the previous batch ran and from requests about to arrive.
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
from modelfab.serve.runtime import SMALL_MODEL_BYTES, OnnxModel
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
    bounds = np.cumsum([0, *counts])
    parts: list[dict[str, Array]] = [{} for _ in counts]
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            return None
        for i in range(len(counts)):
            parts[i][name] = array[bounds[i] : bounds[i + 1]]
    return parts


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
        # Mean wall time of a run; runs this short go inline on the event loop, where a thread hop would
        # cost more than the run itself. Small models start inline (with many models most batchers are
        # new); a slow first run moves the model to the thread pool from then on.
        self.inline_below = 0.0005
        self.run_seconds = 0.0 if model.resident_bytes < SMALL_MODEL_BYTES else 1.0
        self._measured = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(
        self, feeds: dict[str, Array], rows: int, outputs: tuple[str, ...] | None, context: Any = None
    ) -> dict[str, Array]:
        if len(self._queue) >= self.queue_size:
            raise OverloadedError(
                f"model {self.model.name} has {len(self._queue)} requests queued; retry shortly",
                retry_after=1.0,
            )
        item = Item(feeds, rows, outputs, asyncio.get_running_loop().create_future(), context)
        self._queue.append(item)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"batcher {self.model.name}")
        return await item.future

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    async def _loop(self) -> None:
        # Ends when the queue is empty (``submit`` starts a new one): an idle batcher holds no task, so an
        # evicted model is freed at once by reference counting, not at the next full garbage collection.
        try:
            while self._queue:
                batch = await self._collect()
                if batch:
                    await self._dispatch(batch)
        finally:
            self._task = None

    async def _collect(self) -> list[Item]:
        first = self._queue[0]
        deadline = first.enqueued + self.max_wait
        while True:
            rows = 0
            for n, item in enumerate(self._queue):
                rows += item.rows
                if rows >= self.max_batch_size:
                    return self._take(n + 1)
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
        groups: dict[tuple[Any, ...], list[Item]] = {}
        for item in batch:
            groups.setdefault(item.signature(), []).append(item)
        loop = asyncio.get_running_loop()
        for group in groups.values():
            try:
                started = time.perf_counter()
                if self.run_seconds < self.inline_below:
                    results = self._run(group)
                else:
                    results = await loop.run_in_executor(self._executor, self._run, group)
                self._measure((time.perf_counter() - started) / max(1, len(group)))
            except BaseException as exc:
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for item, result in zip(group, results, strict=True):
                if not item.future.done():
                    if isinstance(result, BaseException):
                        item.future.set_exception(result)
                    else:
                        item.future.set_result(result)

    def _measure(self, took: float) -> None:
        self.run_seconds = took if not self._measured else 0.8 * self.run_seconds + 0.2 * took
        self._measured = True

    def _run(self, group: list[Item]) -> list[dict[str, Array] | BaseException]:
        """Runs in the executor thread: one ONNX Runtime call for the group, then the after-run hook."""
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
        ok = [(i, r) for i, r in zip(group, results, strict=True) if not isinstance(r, BaseException)]
        if self._after_run is not None and ok:
            self._after_run([i for i, _ in ok], [r for _, r in ok])
        if self._on_batch is not None:
            self._on_batch(sum(i.rows for i in group), len(group), time.thread_time() - cpu)
        return results
