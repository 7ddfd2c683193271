"""Server options with the defaults the CLI shows."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelfab.errors import ConfigError
from modelfab.serve.hooks import DEFAULT_EXTRA_METRICS, DEFAULT_EXTRA_ROUTES, DEFAULT_ROUTER

__all__ = ["ServeOptions", "parse_bytes"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "t": 10**12,
    "tb": 10**12,
}


def parse_bytes(text: str | int) -> int:
    """``512MiB``, ``2GB``, ``1048576`` → bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ConfigError(f"cannot read {text!r} as a size: write e.g. 512MiB, 2GiB or 1000000")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How one worker serves. Recipe ``serving:`` sections override the batching fields per model."""

    max_memory_bytes: int = 1 << 30
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    queue_size: int = 256
    request_timeout_s: float = 30.0
    max_body_bytes: int = 64 << 20
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
    # Disk for optimized graphs of small models that load again and again (see serve/prepared.py), per
    # worker, under {home}/run; 0 turns it off.
    prepared_graph_bytes: int = 256 << 20
    # Small models that differ only in their weights run on one shared session (see serve/shared.py).
    share_graphs: bool = True
    server_name: str = "modelfab"
    # ``module:function`` hooks called with the server settings; a missing module means no hook.
    router_factory: str | None = DEFAULT_ROUTER
    extra_routes: str | None = DEFAULT_EXTRA_ROUTES
    extra_metrics: str | None = DEFAULT_EXTRA_METRICS
