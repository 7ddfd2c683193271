"""``run_server``: what ``modelfab serve`` calls."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelfab.errors import ConfigError
from modelfab.serve.metrics import METRICS_DIR_ENV
from modelfab.serve.options import Plugin, ServeOptions, default_metrics, default_router, default_routes
from modelfab.serve.workers.autoscale import ScalePolicy, worker_budget
from modelfab.serve.workers.supervisor import Supervisor, WorkerSpec
from modelfab.units import parse_bytes

__all__ = ["DEFAULT_SOURCE", "run_server"]

log = logging.getLogger("modelfab.serve")
DEFAULT_SOURCE = "modelfab.serve.models.source:workspace_source"


def run_server(
    settings: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int | None = 8001,
    workers: int | str = "auto",
    max_memory_bytes: int | str = "1GiB",
    *,
    min_workers: int = 1,
    max_batch_size: int = 64,
    max_wait_ms: float = 2.0,
    queue_size: int = 256,
    request_timeout_s: float = 30.0,
    max_body_bytes: int | str = "64MiB",
    read_timeout_s: float = 60.0,
    keepalive_timeout_s: float = 75.0,
    max_connections: int = 2048,
    idle_ttl_s: float = 600.0,
    log_sample_rate: float = 1.0,
    pinned: Sequence[str] = (),
    share_graphs: bool = True,
    source_factory: str = DEFAULT_SOURCE,
    log_level: str = "INFO",
    router_factory: Plugin | None = default_router,
    extra_routes: Plugin | None = default_routes,
    extra_metrics: Plugin | None = default_metrics,
    db_pool_size: int = 2,
    db_max_overflow: int = 4,
    providers: Sequence[str] = (),
) -> None:
    """Serve every registered model over OIP v2 REST (``port``) and gRPC (``grpc_port``; None: off).

    ``workers="auto"`` starts one worker and lets the autoscaler grow to the core count; a number fixes the
    count. ``max_memory_bytes`` (e.g. ``"512MiB"``) bounds the loaded models of the whole server: each
    running worker gets an equal share of it, rebalanced as the autoscaler adds or removes workers.
    ``providers``: ONNX Runtime execution providers (e.g. ``("cuda", "cpu")``) for models whose recipe's
    ``serving:`` names none; empty: CUDA when installed, then CPU.
    ``db_pool_size`` and ``db_max_overflow`` bound each worker's registry connections (PostgreSQL).
    ``router_factory``, ``extra_routes`` and ``extra_metrics`` plug in
    canary routing, ``/v2/feedback`` and the loop's gauges (see ServeOptions; None turns one off).
    ``read_timeout_s``, ``keepalive_timeout_s`` and ``max_connections`` (per worker) bound what slow, idle or
    numerous clients hold; ServeOptions has the HTTP front's other limits.
    Blocks until SIGINT/SIGTERM.
    """
    cores = os.cpu_count() or 1
    if workers == "auto":
        count, policy = min_workers, ScalePolicy(min_workers=min_workers, max_workers=cores)
    elif isinstance(workers, int) or (isinstance(workers, str) and workers.isdigit()):
        count, policy = int(workers), None
    else:
        raise ConfigError(f"--workers must be a number or 'auto', not {workers!r}")
    if count < 1:
        raise ConfigError("--workers must be at least 1")
    if not 0.0 <= log_sample_rate <= 1.0:
        raise ConfigError("the prediction log sampling rate must be between 0 and 1")
    if db_pool_size < 1 or db_max_overflow < 0:
        raise ConfigError(
            f"the database pool needs a size of at least 1 and an overflow of at least 0, not {db_pool_size} "
            f"and {db_max_overflow}"
        )
    if read_timeout_s <= 0 or keepalive_timeout_s <= 0:
        raise ConfigError("--read-timeout and --keepalive-timeout must be more than 0 seconds")
    if max_connections < 1:
        raise ConfigError("--max-connections must be at least 1")
    from modelfab.serve.models.providers import parse_providers

    try:
        provider_names = parse_providers(providers)
    except ValueError as exc:
        raise ConfigError(f"--providers: {exc}") from None
    budget = parse_bytes(max_memory_bytes)
    options = ServeOptions(
        max_memory_bytes=worker_budget(budget, count),
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        request_timeout_s=request_timeout_s,
        max_body_bytes=parse_bytes(max_body_bytes),
        read_timeout_s=read_timeout_s,
        keepalive_timeout_s=keepalive_timeout_s,
        max_connections=max_connections,
        idle_ttl_s=idle_ttl_s,
        log_sample_rate=log_sample_rate,
        pinned=tuple(pinned),
        share_graphs=share_graphs,
        router_factory=router_factory,
        extra_routes=extra_routes,
        extra_metrics=extra_metrics,
        db_pool_size=db_pool_size,
        db_max_overflow=db_max_overflow,
        providers=provider_names,
    )
    home = Path(settings.home)
    run_dir = home / "run"
    metrics_dir = run_dir / f"metrics-{os.getpid()}"
    for stale in run_dir.glob("prepared-*"):  # left by workers that were killed
        shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    # Set before the forkserver starts, so every worker inherits it.
    os.environ[METRICS_DIR_ENV] = str(metrics_dir)
    logging.basicConfig(level=log_level, format="%(asctime)s supervisor %(levelname)s %(name)s: %(message)s")
    spec = WorkerSpec(settings, host, port, grpc_port, options, source_factory, log_level, budget)
    log.info(
        "serving on http://%s:%d%s with %s worker(s) sharing %d bytes of models; metrics at /metrics",
        host,
        port,
        f" and grpc {host}:{grpc_port}" if grpc_port else "",
        workers,
        budget,
    )
    try:
        Supervisor(spec, count, policy=policy, status_file=run_dir / "serve.json").run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop(METRICS_DIR_ENV, None)
