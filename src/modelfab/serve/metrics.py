"""Prometheus metrics of the server, per model and version.

With several workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by the supervisor before workers start and
``/metrics`` aggregates every worker's files, so any worker answers for the whole server.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as mp

from modelfab.serve.cache import CacheEvents

__all__ = ["CONTENT_TYPE", "ServeMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_MV = ("model", "version")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServeMetrics(CacheEvents):
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelfab_requests", "Inference requests answered", [*_MV, "protocol"], registry=r
        )
        self.errors = Counter(
            "modelfab_request_errors", "Inference requests that failed", [*_MV, "code"], registry=r
        )
        self.latency = Histogram(
            "modelfab_request_seconds", "Inference request latency", _MV, buckets=_LATENCY, registry=r
        )
        self.batch_size = Histogram(
            "modelfab_batch_size", "Rows per ONNX Runtime call", _MV, buckets=_BATCH, registry=r
        )
        self.batch_requests = Histogram(
            "modelfab_batch_requests", "Requests per ONNX Runtime call", _MV, buckets=_BATCH, registry=r
        )
        self.predictions = Counter("modelfab_predictions", "Rows predicted", _MV, registry=r)
        self.cpu_seconds = Counter(
            "modelfab_model_cpu_seconds", "CPU seconds spent in ONNX Runtime", _MV, registry=r
        )
        self.queue_depth = Gauge(
            "modelfab_queue_depth",
            "Requests waiting for a batch",
            _MV,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.resident_bytes = Gauge(
            "modelfab_model_resident_bytes",
            "Bytes held by a loaded model",
            _MV,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.loads = Counter("modelfab_model_loads", "Model loads", _MV, registry=r)
        self.load_seconds = Histogram(
            "modelfab_model_load_seconds",
            "Time to fetch, check and load a model",
            buckets=_LATENCY,
            registry=r,
        )
        self.evictions = Counter("modelfab_model_evictions", "Models unloaded", [*_MV, "reason"], registry=r)
        self.workers = Gauge(
            "modelfab_workers", "Worker processes running", registry=r, multiprocess_mode="livesum"
        )
        # Counted by the supervisor in shared memory; workers publish the totals.
        self.scale_events = Gauge(
            "modelfab_scale_events",
            "Autoscaler decisions so far",
            ["direction"],
            registry=r,
            multiprocess_mode="max",
        )

    # CacheEvents
    def loaded(self, name: str, version: int, size: int, seconds: float) -> None:
        v = str(version)
        self.loads.labels(name, v).inc()
        self.load_seconds.observe(seconds)
        self.resident_bytes.labels(name, v).set(size)

    def evicted(self, name: str, version: int, size: int, reason: str) -> None:
        v = str(version)
        self.evictions.labels(name, v, reason).inc()
        self.resident_bytes.labels(name, v).set(0)

    def render(self) -> bytes:
        if multiprocess_dir() is None:
            return generate_latest(self.registry)
        agg = CollectorRegistry()
        mp.MultiProcessCollector(agg)  # type: ignore[no-untyped-call]
        return generate_latest(agg)


def labels(name: str, version: int) -> tuple[Any, ...]:
    return (name, str(version))
