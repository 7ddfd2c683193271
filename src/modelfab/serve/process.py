"""The entry point of a worker process started by the supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelfab.serve.service import InferenceService
from modelfab.serve.source import ModelSource
from modelfab.serve.worker import Worker

__all__ = ["load_factory", "worker_main"]

log = logging.getLogger("modelfab.serve")


def load_factory(path: str) -> Callable[[Any], ModelSource]:
    """Import ``module:attribute``: a callable taking Settings and returning a ModelSource."""
    module, _, attr = path.partition(":")
    factory: Callable[[Any], ModelSource] = getattr(importlib.import_module(module), attr)
    return factory


async def _report(service: InferenceService, worker: Worker, slots: Any, index: int, capacity: int) -> None:
    """Publish this worker's load for the autoscaler; exit if the supervisor is gone."""
    parent = os.getppid()
    service.metrics.workers.set(1)
    while True:
        slots[index] = service.inflight
        service.metrics.scale_events.labels("up").set(slots[capacity])
        service.metrics.scale_events.labels("down").set(slots[capacity + 1])
        if os.getppid() != parent:
            log.error("supervisor is gone; worker %d stopping", index)
            worker.stop()
            return
        await asyncio.sleep(0.1)


def worker_main(spec: Any, index: int, slots: Any, capacity: int) -> None:
    logging.basicConfig(
        level=spec.log_level, format=f"%(asctime)s worker-{index} %(levelname)s %(name)s: %(message)s"
    )
    source = load_factory(spec.source_factory)(spec.settings)
    service = InferenceService(
        source, spec.options, home=Path(spec.settings.home), worker=str(index), settings=spec.settings
    )
    worker = Worker(service, spec.host, spec.port, spec.grpc_port)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        reporter = asyncio.create_task(_report(service, worker, slots, index, capacity))
        try:
            await worker.serve()
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
