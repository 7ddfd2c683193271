"""Server options with the defaults the CLI shows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Plugin", "ServeOptions", "default_metrics", "default_router", "default_routes"]

# What the server plugs in from the rest of modelfab, each called once per worker with the server's
# Settings. Imported lazily by the callables below so that reading options imports no database code.
Plugin = Callable[[Any], Any]


def default_router(settings: Any) -> Any:
    """Canary and shadow routing from the registry's deployments table."""
    from modelfab.traffic.routing import make_router

    return make_router(settings)


def default_routes(settings: Any) -> Any:
    """``POST /v2/feedback``."""
    from modelfab.serve.transport.feedback import routes

    return routes(settings)


def default_metrics(settings: Any) -> Any:
    """The loop's online metric and drift per live version, for ``/metrics``."""
    from modelfab.traffic.watch import metrics_text

    return metrics_text(settings)


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How one worker serves. Recipe ``serving:`` sections override the batching fields per model."""

    max_memory_bytes: int = 1 << 30
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    queue_size: int = 256
    request_timeout_s: float = 30.0
    max_body_bytes: int = 64 << 20
    # Limits of the HTTP/1 front, per worker (see serve/transport/http1.py). Headers beyond the limits get
    # 414/431; connections beyond ``max_connections`` get 503 and are closed at once.
    max_url_bytes: int = 8 << 10
    max_header_bytes: int = 32 << 10
    max_headers: int = 100
    max_connections: int = 2048
    # A keep-alive connection with nothing to do is closed after this long (above the 60 s idle timeout of
    # common load balancers, so that they, not we, close first and never send on a connection we closed).
    keepalive_timeout_s: float = 75.0
    # A request must arrive whole (head and body) within this long of its first byte, else 408 and close;
    # a client that leaves answers unread this long is disconnected.
    read_timeout_s: float = 60.0
    # Requests read ahead of their answers on one connection: reading pauses at this many, or when more
    # than ``max_pipelined_bytes`` wait, until answers drain. One read holding more than twice this many
    # (the parser cannot stop mid-read) gets 429 after the answers owed, and the connection closes.
    max_pipelined: int = 16
    max_pipelined_bytes: int = 4 << 20
    idle_ttl_s: float = 600.0
    # How long a name/alias lookup is reused; with a source that has a cheap change check (the workspace's),
    # lookups are kept until an alias moves, checked this often. Either way an alias move reaches the server
    # within about this time.
    resolve_ttl_s: float = 0.5
    log_sample_rate: float = 1.0
    log_predictions: bool = True
    ort_threads: int = 1
    run_threads: int = 1
    pinned: tuple[str, ...] = ()
    # Disk for optimized graphs of small models that load again and again (see serve/models/prepared.py), per
    # worker, under {home}/run; 0 turns it off.
    prepared_graph_bytes: int = 256 << 20
    # Small models that differ only in their weights run on one shared session (see serve/models/shared.py).
    share_graphs: bool = True
    # ONNX Runtime execution providers for models whose recipe names none (see serve/models/providers.py);
    # empty: CUDA when installed, then CPU.
    providers: tuple[str, ...] = ()
    server_name: str = "modelfab"
    # Plug-ins called with the server settings (None turns one off). The defaults need a workspace: a
    # service built without settings runs without them. One that raises stops the worker's start.
    router_factory: Plugin | None = default_router
    extra_routes: Plugin | None = default_routes
    extra_metrics: Plugin | None = default_metrics
    # Database connections each worker's model source keeps open, and how many more it may open under load
    # (SQLAlchemy pool_size and max_overflow; PostgreSQL and other servers, not SQLite files).
    db_pool_size: int = 2
    db_max_overflow: int = 4
