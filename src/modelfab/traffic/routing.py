"""Traffic routing for models under trial, for the inference server's hot path.

``Router.route`` is synchronous and touches no I/O: policies (the ``deployments`` table) are cached in
memory and refreshed by a background thread about twice a second, so a canary the loop starts or ends
reaches every worker within a second.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from modelfab.store import schema as t
from modelfab.store.registry import CHAMPION

__all__ = ["Decision", "Policy", "Router", "make_router", "pick"]

log = logging.getLogger("modelfab.iterate")
REFRESH_S = 0.5


@dataclass(frozen=True)
class Decision:
    """Which version answers (``serve``) and which one also scores the request silently (``shadow``)."""

    serve: int | str
    shadow: int | str | None = None


@dataclass(frozen=True)
class Policy:
    mode: str  # canary | shadow
    version: int
    share: float


_DEFAULT = Decision(CHAMPION)


def pick(policy: Policy | None, model: str, request_key: str | None, draw: float | None = None) -> Decision:
    """The pure routing rule. A request key always lands on the same side of a canary (hash of model
    and key, uniform in [0, 1)); without one the side is random (``draw`` lets tests fix it)."""
    if policy is None:
        return _DEFAULT
    if policy.mode == "shadow":
        return Decision(CHAMPION, policy.version)
    if request_key is not None:
        digest = hashlib.blake2b(f"{model}\0{request_key}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2.0**64
    else:
        u = random.random() if draw is None else draw
    return Decision(policy.version) if u < policy.share else _DEFAULT


class Router:
    """Routes by the deployments of one tenant, cached in memory."""

    def __init__(self, engine: Engine, tenant: str = "default", refresh_s: float = REFRESH_S) -> None:
        self.engine = engine
        self.tenant = tenant
        self.refresh_s = refresh_s
        self._policies: dict[str, Policy] = {}
        self._loaded = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def route(self, model: str, request_key: str | None = None) -> Decision:
        if not self._loaded:
            self._start()
        return pick(self._policies.get(model), model, request_key)

    def refresh(self) -> None:
        """Reload the policies now (the background thread calls this)."""
        d = t.deployments
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(d.c.name, d.c.mode, d.c.version, d.c.share).where(d.c.tenant == self.tenant)
                ).all()
        except sa.exc.SQLAlchemyError as exc:
            # Keep routing by the last known policies: a database blip must not fail inferences.
            log.warning("cannot refresh routing policies: %s", exc.__class__.__name__)
            return
        self._policies = {r.name: Policy(r.mode, int(r.version), float(r.share)) for r in rows}
        self._loaded = True

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self.refresh()
            self._loaded = True
            self._thread = threading.Thread(target=self._run, name="modelfab-router", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def make_router(settings: Any) -> Router:
    """The router of a server worker; nothing is read until the first ``route`` call."""
    from modelfab.store.db import SMALL_POOL, create_engine

    return Router(create_engine(settings.resolved_database_url, **SMALL_POOL), settings.tenant)
