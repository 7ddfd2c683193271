"""Extension points the iteration loop plugs into: a deployment router, extra HTTP routes and extra
``/metrics`` text.

Each is a ``module:function`` string (``ServeOptions.router_factory``, ``extra_routes``, ``extra_metrics``)
called with the
server's settings. A module that does not exist means "no hook", so the server runs without the iteration
loop installed.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Protocol

__all__ = [
    "DEFAULT_EXTRA_METRICS",
    "DEFAULT_EXTRA_ROUTES",
    "DEFAULT_ROUTER",
    "Decision",
    "Router",
    "load_hook",
]

log = logging.getLogger("modelfab.serve")
DEFAULT_ROUTER = "modelfab.iterate.routing:make_router"
DEFAULT_EXTRA_ROUTES = "modelfab.iterate.http:routes"
DEFAULT_EXTRA_METRICS = "modelfab.iterate.http:metrics"  # returns a function giving Prometheus text


class Decision(Protocol):
    """Which version answers a request (``serve``) and which one also scores it silently (``shadow``)."""

    @property
    def serve(self) -> int | str: ...
    @property
    def shadow(self) -> int | str | None: ...


class Router(Protocol):
    def route(self, model: str, request_key: str | None) -> Decision:
        """Synchronous and cheap: called once per infer request that names no version (or ``champion``)."""
        ...


def load_hook(spec: str | None, settings: Any) -> Any:
    """Call ``module:function`` with ``settings``; None when ``spec`` is empty or its module is absent."""
    if not spec:
        return None
    module, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            log.debug("hook %s is not installed; running without it", spec)
            return None
        raise
    return getattr(mod, attr)(settings)
