"""The entry point of a worker process started by the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelfab.serve.metrics import ScrapeFanout, metrics_dir
from modelfab.serve.models.source import ModelSource, workspace_source
from modelfab.serve.service import InferenceService
from modelfab.serve.workers.control import Peers
from modelfab.serve.workers.worker import Worker

__all__ = ["load_factory", "open_source", "worker_main"]

log = logging.getLogger("modelfab.serve")


def load_factory(path: str) -> Callable[[Any], ModelSource]:
    """Import ``module:attribute``: a callable taking Settings and returning a ModelSource."""
    module, _, attr = path.partition(":")
    factory: Callable[[Any], ModelSource] = getattr(importlib.import_module(module), attr)
    return factory


def open_source(spec: Any) -> ModelSource:
    """The worker's model source; the default one gets the database pool bounds of the options."""
    factory = load_factory(spec.source_factory)
    if factory is workspace_source:
        return workspace_source(
            spec.settings, pool_size=spec.options.db_pool_size, max_overflow=spec.options.db_max_overflow
        )
    return factory(spec.settings)


async def _report(service: InferenceService, worker: Worker, slots: Any, index: int, capacity: int) -> None:
    """Publish this worker's load for the autoscaler and its metrics for scrapes; exit if the supervisor
    is gone."""
    parent = os.getppid()
    folder = metrics_dir()
    service.metrics.workers.set(1)
    service.metrics.fanout = ScrapeFanout(slots, capacity + 2)
    if folder is not None:  # so a scrape knows this worker is there before it ever answered one
        _write_snapshot(service, folder)
    frozen = False
    while True:
        if not frozen and worker.started.is_set():
            # Everything imported and built at startup lives as long as the worker: keep it out of the
            # cyclic collector's full passes, which would otherwise scan it all (tens of ms on the loop).
            gc.freeze()
            # Per-model bookkeeping of thousands of models (metrics series, lookups) builds up in the
            # oldest generation, and with models loading and leaving all the time the default thresholds
            # ran a full pass several times a second, each 110-180 ms on the loop (10,000 models,
            # bench/serve_density.py: client p99 76-126 ms). Rarer passes: p99 11 ms, and uncollected
            # cyclic garbage stays bounded by the first threshold (50,000 objects).
            gc.set_threshold(50_000, 20, 20)
            frozen = True
        slots[index] = service.inflight
        service.refresh_gauges()
        service.metrics.scale_events.labels("up").set(slots[capacity])
        service.metrics.scale_events.labels("down").set(slots[capacity + 1])
        if folder is not None:
            _write_snapshot(service, folder)
        if os.getppid() != parent:
            log.error("supervisor is gone; worker %d stopping", index)
            worker.stop()
            return
        await asyncio.sleep(0.1)


def _write_snapshot(service: InferenceService, folder: Path, *, final: bool = False) -> None:
    try:
        if final or not folder.joinpath(f"w-{os.getpid()}.json").exists():
            service.metrics.write_snapshot(folder)
        else:
            service.metrics.answer_scrape(folder)
    except FileNotFoundError:
        pass  # the supervisor removed the folder: the server is stopping
    except OSError as exc:  # a full disk must not stop the worker; scrapes just see older numbers
        log.warning("cannot write the metrics snapshot: %s", exc)


def worker_main(spec: Any, index: int, slots: Any, capacity: int, conn: Any = None) -> None:
    """``conn``: this worker's end of its pipe to the supervisor (see :mod:`.control`)."""
    logging.basicConfig(
        level=spec.log_level, format=f"%(asctime)s worker-{index} %(levelname)s %(name)s: %(message)s"
    )
    source = open_source(spec)
    service = InferenceService(
        source, spec.options, home=Path(spec.settings.home), worker=str(index), settings=spec.settings
    )
    peers = Peers(conn, index, service) if conn is not None else None
    service.peers = peers
    worker = Worker(service, spec.host, spec.port, spec.grpc_port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        reporter = asyncio.create_task(_report(service, worker, slots, index, capacity))
        if peers is not None:
            peers.start()
        try:
            await worker.serve()
        finally:
            if peers is not None:
                peers.stop()
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            folder = metrics_dir()
            if folder is not None:  # the last counts of a worker scaled down or stopping
                service.metrics.workers.set(0)
                _write_snapshot(service, folder, final=True)

    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
