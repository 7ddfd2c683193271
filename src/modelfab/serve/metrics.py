"""Metrics of the server, per model and version, in Prometheus text format.

Updates are plain in-process arithmetic (no locks, no files: everything runs on the worker's event loop or
under the GIL in one executor thread). With several workers a scrape fans out: the worker answering it bumps
a counter in memory shared by all workers (:class:`ScrapeFanout`), each worker sees the bump within a tick
of its reporter and writes a snapshot of its values to the folder named by ``MODELFAB_METRICS_DIR``, and the
answering worker merges them with its own live values. So nothing is written between scrapes, and any
worker answers for the whole server. Counters and histograms of a worker that exited are kept as of its
last snapshot (written at every scrape and when it stops; the supervisor marks it dead), its gauges are not.

Label values never come from a client as such: model and version label a series only once they name a version
the server has loaded or resolved, and requests that fail before that count in
``modelfab_requests_unknown_total{code=...}``. So no request can add series beyond the registered versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, MutableSequence
from pathlib import Path
from typing import Any, Literal

import orjson

from modelfab.serve.models.cache import CacheEvents

__all__ = [
    "CONTENT_TYPE",
    "METRICS_DIR_ENV",
    "Counter",
    "Gauge",
    "Histogram",
    "ScrapeFanout",
    "ServeMetrics",
    "mark_dead",
    "merge_snapshots",
    "render_text",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_DIR_ENV = "MODELFAB_METRICS_DIR"
_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_MV = ("model", "version")

_GENERATION = "__generation__"
# Memory a model version costs the server from its first load on, whether or not it stays loaded: its
# counter and histogram series here (~1.8 KB, measured with tracemalloc over 10,000 models), the service's
# cached label children, its lookup and its prepared-graph record. Counted in the memory budget.
MODEL_BOOKKEEPING_BYTES = 3 * 1024
Kind = Literal["counter", "gauge", "histogram"]
# How a gauge combines over workers: summed over live workers, or the largest value any worker reported.
GaugeMode = Literal["livesum", "max"]
# One family in a snapshot: label values -> value (counter, gauge) or [bucket counts..., sum] (histogram).
Series = dict[tuple[str, ...], Any]


class _Family:
    kind: Kind

    def __init__(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}

    def values(self) -> Series:
        raise NotImplementedError


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Counter(_Family):
    kind: Kind = "counter"

    def labels(self, *values: str) -> _CounterChild:
        child: _CounterChild | None = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = _CounterChild()
        return child

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def values(self) -> Series:
        return {k: c.value for k, c in self._children.items()}


class _GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)


class Gauge(_Family):
    kind: Kind = "gauge"

    def __init__(
        self, name: str, help_text: str, labelnames: Iterable[str] = (), *, mode: GaugeMode = "livesum"
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.mode = mode

    def labels(self, *values: str) -> _GaugeChild:
        child: _GaugeChild | None = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = _GaugeChild()
        return child

    def set(self, value: float) -> None:
        self.labels().set(value)

    def remove(self, *values: str) -> None:
        """Drop a series (a gauge of something that is gone: its memory would otherwise stay forever)."""
        self._children.pop(values, None)

    def values(self) -> Series:
        return {k: c.value for k, c in self._children.items()}


class _HistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative), the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class Histogram(_Family):
    kind: Kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labelnames: Iterable[str] = (), *, buckets: Iterable[float]
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(float(b) for b in buckets)

    def labels(self, *values: str) -> _HistogramChild:
        child: _HistogramChild | None = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = _HistogramChild(self.buckets)
        return child

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def values(self) -> Series:
        return {k: [*c.counts, c.sum] for k, c in self._children.items()}


class ScrapeFanout:
    """A scrape counter in memory shared by the workers: bumped by the worker answering a scrape, watched
    by every worker's reporter, which then writes a fresh snapshot."""

    def __init__(self, shared: MutableSequence[int], index: int) -> None:
        self._shared = shared
        self._index = index
        self._answered = -1

    def request(self) -> int:
        generation = self._shared[self._index] + 1
        self._shared[self._index] = generation
        return generation

    def pending(self) -> int | None:
        """The generation to answer with a snapshot, or None when this worker is up to date."""
        generation = self._shared[self._index]
        return None if generation == self._answered else generation

    def answered(self, generation: int) -> None:
        self._answered = generation


class ServeMetrics(CacheEvents):
    def __init__(self) -> None:
        self.requests = Counter("modelfab_requests", "Inference requests answered", [*_MV, "protocol"])
        self.errors = Counter("modelfab_request_errors", "Inference requests that failed", [*_MV, "code"])
        # Requests that fail before a model version is known (unknown model, version or alias, bad name):
        # model and version would come from the client, so they share one series per status code.
        self.unknown = Counter(
            "modelfab_requests_unknown",
            "Inference requests that failed before naming a known model version",
            ["code"],
        )
        self.latency = Histogram(
            "modelfab_request_seconds", "Inference request latency", _MV, buckets=_LATENCY
        )
        self.batch_size = Histogram("modelfab_batch_size", "Rows per ONNX Runtime call", _MV, buckets=_BATCH)
        self.batch_requests = Histogram(
            "modelfab_batch_requests", "Requests per ONNX Runtime call", _MV, buckets=_BATCH
        )
        self.predictions = Counter("modelfab_predictions", "Rows predicted", _MV)
        self.cpu_seconds = Counter("modelfab_model_cpu_seconds", "CPU seconds spent in ONNX Runtime", _MV)
        self.queue_depth = Gauge("modelfab_queue_depth", "Requests waiting for a batch", _MV)
        self.resident_bytes = Gauge("modelfab_model_resident_bytes", "Bytes held by a loaded model", _MV)
        # One series per loaded version: the execution provider its session runs on first (CPU is always
        # there as ONNX Runtime's fallback, so it is not counted again). Summed over the workers holding it.
        self.provider = Gauge(
            "modelfab_model_provider",
            "Workers holding a model version loaded on an ONNX Runtime execution provider",
            [*_MV, "provider"],
        )
        self._provider_of: dict[tuple[str, str], str] = {}
        self.loads = Counter("modelfab_model_loads", "Model loads", _MV)
        self.load_seconds = Histogram(
            "modelfab_model_load_seconds", "Time to fetch, check and load a model", buckets=_LATENCY
        )
        self.evictions = Counter("modelfab_model_evictions", "Models unloaded", [*_MV, "reason"])
        self.workers = Gauge("modelfab_workers", "Worker processes running")
        self.bookkeeping = Gauge(
            "modelfab_model_bookkeeping_bytes",
            "Memory budget taken by per-model metrics and lookups of every model version seen",
        )
        self.bookkeeping_bytes = 0
        self.shared_graphs = Gauge(
            "modelfab_shared_graphs", "Sessions shared by models that differ only in their weights"
        )
        self.shared_graph_bytes = Gauge(
            "modelfab_shared_graph_bytes", "Memory budget taken by the shared sessions"
        )
        # Counted by the supervisor in shared memory; every worker publishes the same totals.
        self.scale_events = Gauge(
            "modelfab_scale_events", "Autoscaler decisions so far", ["direction"], mode="max"
        )
        # Per worker, read from state by each worker's reporter (InferenceService.refresh_gauges): its share
        # of --max-memory, which changes as workers come and go, and its model source's database pool.
        self.memory_budget = Gauge(
            "modelfab_worker_memory_budget_bytes", "Model memory budget of a worker", ["worker"]
        )
        self.db_connections = Gauge(
            "modelfab_db_connections",
            "Database connections of a worker's pool: open, and checked out (in use)",
            ["worker", "pool", "state"],
        )
        self.families: tuple[_Family, ...] = tuple(v for v in vars(self).values() if isinstance(v, _Family))
        self.fanout: ScrapeFanout | None = None
        self.fanout_wait_s = 2.0

    # CacheEvents
    def loaded(self, name: str, version: int, size: int, seconds: float) -> None:
        v = str(version)
        key = (name, v)
        loads = self.loads._children.get(key)
        if loads is None:  # the first load of this version: its series are here to stay
            loads = self.loads.labels(name, v)
            self.bookkeeping_bytes += MODEL_BOOKKEEPING_BYTES
            self.bookkeeping.set(self.bookkeeping_bytes)
        loads.inc()
        self.load_seconds.observe(seconds)
        self.resident_bytes.labels(name, v).set(size)

    def evicted(self, name: str, version: int, size: int, reason: str) -> None:
        v = str(version)
        self.evictions.labels(name, v, reason).inc()
        # An unloaded model has no resident bytes series at all: with thousands of models coming and
        # going, series of zeros would only grow. Counters and histograms stay (they must not go back).
        self.resident_bytes.remove(name, v)
        provider = self._provider_of.pop((name, v), None)
        if provider is not None:
            self.provider.remove(name, v, provider)

    def placed(self, name: str, version: int, providers: tuple[str, ...]) -> None:
        if not providers:
            return
        key = (name, str(version))
        old = self._provider_of.get(key)
        if old is not None and old != providers[0]:
            self.provider.remove(*key, old)
        self._provider_of[key] = providers[0]
        self.provider.labels(*key, providers[0]).set(1)

    # -- export ----------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Series]:
        """This worker's values; cheap enough to take on the event loop."""
        return {f.name: f.values() for f in self.families}

    def write_snapshot(self, folder: Path, pid: int | None = None, generation: int = 0) -> None:
        """Publish this worker's values for the others' scrapes (atomically: readers never see half)."""
        doc: dict[str, Any] = {
            name: [[list(k), v] for k, v in series.items()] for name, series in self.snapshot().items()
        }
        doc[_GENERATION] = generation
        pid = os.getpid() if pid is None else pid
        path = folder / f"w-{pid}.json"
        tmp = folder / f".w-{pid}.tmp"
        tmp.write_bytes(orjson.dumps(doc))
        os.replace(tmp, path)

    def answer_scrape(self, folder: Path, pid: int | None = None) -> None:
        """Write a snapshot if a scrape asked for one since the last (called by each worker's reporter)."""
        generation = self.fanout.pending() if self.fanout is not None else None
        if generation is not None:
            self.write_snapshot(folder, pid, generation)
            assert self.fanout is not None
            self.fanout.answered(generation)

    def render(self, own: dict[str, Series] | None = None, folder: Path | None = None) -> bytes:
        """Prometheus text of this worker (``own``, default: a snapshot now) plus the snapshots in ``folder``
        as they are. Pass ``own`` taken on the event loop when calling this from another thread."""
        own = self.snapshot() if own is None else own
        if folder is not None:
            own = merge_snapshots(self, own, ((live, snap) for live, _, snap in _read_others(folder)))
        return render_text(self.families, own)

    async def collect(self) -> bytes:
        """Prometheus text for the whole server: with other workers, ask them for fresh snapshots first and
        wait (up to ``fanout_wait_s``) until every live worker has written one."""
        own = self.snapshot()  # here on the loop, where the values change
        folder = metrics_dir()
        if folder is None:
            return await asyncio.to_thread(render_text, self.families, own)
        others: list[tuple[bool, int, dict[str, Series]]] = []
        generation = self.fanout.request() if self.fanout is not None else 0
        deadline = time.monotonic() + self.fanout_wait_s
        while True:
            others = await asyncio.to_thread(lambda: list(_read_others(folder)))
            fresh = all(g >= generation for live, g, _ in others if live)
            if fresh or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)

        def render() -> bytes:
            merged = merge_snapshots(self, own, ((live, snap) for live, _, snap in others))
            return render_text(self.families, merged)

        return await asyncio.to_thread(render)


def metrics_dir() -> Path | None:
    value = os.environ.get(METRICS_DIR_ENV)
    return Path(value) if value else None


def mark_dead(folder: Path, pid: int) -> None:
    """Called by the supervisor when a worker exits: its counters stay, its gauges stop counting."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(folder / f"w-{pid}.json", folder / f"dead-{pid}.json")


def _read_others(folder: Path) -> Iterator[tuple[bool, int, dict[str, Series]]]:
    """(live, generation, snapshot) of every other worker, live or dead."""
    me = f"w-{os.getpid()}.json"
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if name == me or not name.endswith(".json"):
            continue
        try:
            raw = orjson.loads((folder / name).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            continue  # renamed by the supervisor meanwhile, or not ours
        generation = raw.pop(_GENERATION, 0)
        snap = {fam: {tuple(k): v for k, v in rows} for fam, rows in raw.items()}
        yield name.startswith("w-"), generation, snap


def merge_snapshots(
    metrics: ServeMetrics, own: dict[str, Series], others: Iterable[tuple[bool, dict[str, Series]]]
) -> dict[str, Series]:
    """Combine this worker's values with other workers' snapshots, per family kind and gauge mode."""
    kinds = {f.name: f for f in metrics.families}
    merged: dict[str, Series] = {name: dict(series) for name, series in own.items()}
    for live, snap in others:
        for name, series in snap.items():
            family = kinds.get(name)
            if family is None:
                continue
            target = merged.setdefault(name, {})
            for key, value in series.items():
                old = target.get(key)
                if isinstance(family, Gauge):
                    if family.mode == "max":
                        target[key] = value if old is None else max(old, value)
                    elif live:
                        target[key] = value if old is None else old + value
                elif isinstance(family, Histogram):
                    target[key] = value if old is None else [a + b for a, b in zip(old, value, strict=True)]
                else:
                    target[key] = value if old is None else old + value
    return merged


def _fmt(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: tuple[str, str] | None = None) -> str:
    pairs = list(zip(names, values, strict=True))
    if extra is not None:
        pairs.append(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs)) + "}"


def render_text(families: Iterable[_Family], values: dict[str, Series]) -> bytes:
    """Prometheus text exposition format 0.0.4; labels sorted by name."""
    out: list[str] = []
    bounds = {
        f.name: [_fmt(b) for b in (*f.buckets, float("inf"))] for f in families if isinstance(f, Histogram)
    }
    for f in families:
        series = values.get(f.name, {})
        name = f"{f.name}_total" if f.kind == "counter" else f.name
        out.append(f"# HELP {name} {f.help}\n# TYPE {name} {f.kind}\n")
        for key in sorted(series):
            value = series[key]
            if isinstance(f, Histogram):
                # the label set once per series, with the bucket bound spliced in per line
                head, _, tail = _labels(f.labelnames, key, ("le", "\0")).partition("\0")
                cumulative = 0
                for bound, n in zip(bounds[f.name], value[:-1], strict=True):
                    cumulative += n
                    out.append(f"{name}_bucket{head}{bound}{tail} {cumulative}.0\n")
                lab = _labels(f.labelnames, key)
                out.append(f"{name}_count{lab} {cumulative}.0\n{name}_sum{lab} {_fmt(value[-1])}\n")
            else:
                out.append(f"{name}{_labels(f.labelnames, key)} {_fmt(value)}\n")
    return "".join(out).encode()
