"""One batcher per loaded (model, version), with its metric children: made on first use, dropped with
the model, and swept by housekeeping."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modelfab.serve.metrics import ServeMetrics
from modelfab.serve.models.batching import Batcher, Item
from modelfab.serve.models.runtime import OnnxModel
from modelfab.serve.models.source import VersionInfo
from modelfab.serve.options import ServeOptions
from modelfab.serve.types import Array

__all__ = ["Batchers"]

AfterRun = Callable[[Sequence[Item], Sequence[dict[str, Array]]], None]
Key = tuple[str, int]


class Batchers:
    def __init__(
        self,
        options: ServeOptions,
        metrics: ServeMetrics,
        executor: ThreadPoolExecutor,
        after_run: AfterRun | None,
    ) -> None:
        self._options = options
        self._metrics = metrics
        self._executor = executor
        self._after_run = after_run
        self._table: dict[Key, Batcher] = {}
        # Kept across evictions: with many models, resolving label children adds up.
        self._children: dict[Key, tuple[Any, Any, Any, Any]] = {}

    def get(self, info: VersionInfo, model: OnnxModel) -> Batcher:
        key = (info.name, info.version)
        b = self._table.get(key)
        if b is None or b.model is not model:  # a replaced batcher's task ends once its queue drains
            serving = info.serving or {}
            o = self._options
            children = self._children.get(key)
            if children is None:
                mv = (info.name, str(info.version))
                m = self._metrics
                children = (
                    m.batch_size.labels(*mv),
                    m.batch_requests.labels(*mv),
                    m.cpu_seconds.labels(*mv),
                    m.predictions.labels(*mv),
                )
                self._children[key] = children
            sizes, reqs, cpu, preds = children

            def on_batch(rows: int, n: int, cpu_s: float) -> None:
                sizes.observe(rows)
                reqs.observe(n)
                cpu.inc(cpu_s)
                preds.inc(rows)

            b = Batcher(
                model,
                self._executor,
                max_batch_size=int(serving.get("max_batch_size", o.max_batch_size)),
                max_wait=float(serving.get("max_wait_ms", o.max_wait_ms)) / 1000.0,
                queue_size=int(serving.get("queue_size", o.queue_size)),
                after_run=self._after_run,
                on_batch=on_batch,
            )
            self._table[key] = b
        return b

    def drop(self, name: str, version: int) -> None:
        """The model was evicted: idle (the cache never evicts one with requests in flight), so its
        batcher's loop task has ended too."""
        self._table.pop((name, version), None)
        self._metrics.queue_depth.remove(name, str(version))

    def sweep(self, is_loaded: Callable[[str, int], bool]) -> None:
        """Close batchers of unloaded models with nothing queued; publish the others' queue depth."""
        for key, b in list(self._table.items()):
            if not is_loaded(*key) and b.depth == 0 and b.incoming == 0:
                b.close()
                del self._table[key]
                self._metrics.queue_depth.remove(key[0], str(key[1]))
            else:
                self._metrics.queue_depth.labels(key[0], str(key[1])).set(b.depth)

    def expire(self, timeout: float) -> None:
        now = time.monotonic()
        for b in list(self._table.values()):
            b.expire(timeout, now)

    def close(self) -> None:
        for b in self._table.values():
            b.close()
