"""Where the server finds models: the registry and artifact store, behind a small protocol.

Lookups are cached so the hot path does not hit SQL per request (nor per model load: with 10,000 models
most requests would otherwise miss a short-lived cache). A source with a cheap change check
(``generation()``, the workspace's alias history counter) keeps lookups until it changes, polled every
``ttl`` seconds; others keep them ``ttl`` seconds. Either way an alias moved by the iteration loop reaches
the server within about ``ttl``.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from modelfab.errors import ConfigError, InvalidInputError, NotFoundError

__all__ = [
    "CachedSource",
    "Lookup",
    "ModelSource",
    "VersionInfo",
    "WatchableSource",
    "WorkspaceSource",
    "check_model_name",
    "parse_ref",
    "pool_counts",
    "workspace_source",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")

log = logging.getLogger("modelfab.serve")


def check_model_name(name: str) -> str:
    """Refuse names that could be path tricks or garbage before they reach the registry."""
    if not _NAME.match(name) or ".." in name:
        raise NotFoundError(
            f"no model named {name[:80]!r}: names are letters, digits, '.', '_' and '-' (no '..')"
        )
    return name


def parse_ref(ref: str | None) -> str | int | None:
    """A URL version segment: a number, an alias name, or None for champion."""
    if ref is None or ref == "":
        return None
    if ref.isdigit():
        return int(ref)
    if not _NAME.match(ref):
        raise InvalidInputError(f"version {ref[:40]!r} is neither a number nor an alias name")
    return ref


class VersionInfo(Protocol):
    """The part of the registry's ``ModelVersion`` the server reads."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def artifact_digest(self) -> str: ...
    @property
    def artifact_size(self) -> int: ...
    @property
    def aliases(self) -> list[str]: ...
    @property
    def serving(self) -> dict[str, Any]: ...


_NO_SERVING: dict[str, Any] = {}


class Lookup:
    """What the server keeps of a resolved version: the few fields it reads, not the registry's whole record
    (metrics, params, lineage, ...). With 10,000 models that is ~0.2 KB per model instead of ~1.5 KB."""

    __slots__ = ("aliases", "artifact_digest", "artifact_size", "name", "serving", "version")

    def __init__(self, info: VersionInfo) -> None:
        self.name: str = info.name
        self.version: int = int(info.version)
        self.artifact_digest: str = info.artifact_digest
        self.artifact_size: int = int(info.artifact_size)
        self.aliases: list[str] = list(info.aliases)
        self.serving: dict[str, Any] = dict(info.serving) if info.serving else _NO_SERVING

    def __repr__(self) -> str:
        return f"Lookup({self.name!r}, {self.version})"


def _slim(info: VersionInfo) -> VersionInfo:
    return info if isinstance(info, Lookup) else Lookup(info)


class ModelSource(Protocol):
    def resolve(self, name: str, ref: str | int | None) -> VersionInfo: ...
    def fetch(self, digest: str) -> bytes: ...
    def index(self) -> Sequence[VersionInfo]: ...


class WatchableSource(ModelSource, Protocol):
    def generation(self) -> Any:
        """A cheap value that changes whenever a lookup could answer differently (an alias moved)."""
        ...


class WorkspaceSource:
    """A :class:`ModelSource` over a workspace's registry and artifact store."""

    def __init__(self, workspace: Any) -> None:
        self._ws = workspace

    @property
    def workspace(self) -> Any:
        return self._ws

    def resolve(self, name: str, ref: str | int | None) -> VersionInfo:
        info: VersionInfo = self._ws.registry.get_version(name, ref)
        return info

    def fetch(self, digest: str) -> bytes:
        data: bytes = self._ws.artifacts.get(digest)
        return data

    def index(self) -> Sequence[VersionInfo]:
        versions: list[VersionInfo] = list(self._ws.registry.list_versions(limit=100_000))
        return versions

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> bool:
        """On PostgreSQL, call ``on_change`` whenever a registry writer moves an alias (LISTEN/NOTIFY), from
        a daemon thread that reconnects after errors. Returns False where there is no such channel."""
        engine = self._ws.registry.engine
        if engine.dialect.name != "postgresql":
            return False
        threading.Thread(
            target=_listen_forever, args=(engine, on_change, stop), name="modelfab-alias-listen", daemon=True
        ).start()
        return True

    def connections(self) -> tuple[int, int] | None:
        """(open, checked out) connections of the registry's pool; None for a pool that does not count."""
        return pool_counts(self._ws.registry.engine.pool)

    def generation(self) -> Any:
        import sqlalchemy as sa

        from modelfab.store import schema

        registry = self._ws.registry
        h = schema.alias_history
        with registry.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(h.c.id), sa.func.count(h.c.id))).one()[:2]


def _listen_forever(engine: Any, on_change: Callable[[], None], stop: threading.Event) -> None:
    from modelfab.store.registry import ALIAS_CHANNEL

    while not stop.is_set():
        try:
            raw = engine.raw_connection()
            try:
                conn = raw.driver_connection
                conn.autocommit = True
                conn.execute(f"LISTEN {ALIAS_CHANNEL}")
                on_change()  # anything that moved while (re)connecting
                while not stop.is_set():
                    for _ in conn.notifies(timeout=1.0, stop_after=1):
                        on_change()
            finally:
                raw.invalidate()  # a LISTENing connection must not go back to the pool
        except Exception as exc:  # the database went away: polling still covers us; retry shortly
            log.warning("alias change listener lost its connection (%s); reconnecting", exc)
            stop.wait(2.0)


class CachedSource:
    """Wraps a source with a cache of resolutions (including 'not found', kept ``ttl`` seconds only).

    The cache holds at most ``max_entries`` lookups (oldest first out), each a compact :class:`Lookup`, so
    its memory is bounded however many models are registered or probed. ``champion`` and no version share
    one entry.
    """

    def __init__(
        self,
        inner: ModelSource,
        ttl: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        *,
        watched_ttl: float = 300.0,
        max_entries: int = 50_000,
        max_missing: int = 4096,
    ):
        self.inner = inner
        self.ttl = ttl
        self.max_entries = max(1, max_entries)
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str | int | None], tuple[float, VersionInfo]] = {}
        # 'Not found' answers apart, fewer and as bare messages: clients choose these names, so 10,000
        # probes must not hold 10,000 exceptions (with their tracebacks) until the found ones push them out.
        self._missing: dict[tuple[str, str | int | None], tuple[float, str]] = {}
        self.max_missing = max(1, max_missing)
        self._generation: Any = None
        self.watches_changes = callable(getattr(inner, "generation", None))
        self._found_ttl = watched_ttl if self.watches_changes else ttl

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> bool:
        """Push notification of alias moves, where the source has it (PostgreSQL); else False."""
        listen = getattr(self.inner, "listen", None)
        return bool(listen(on_change, stop)) if callable(listen) else False

    def check_changes(self) -> bool:
        """Poll the source's generation (blocking I/O); drop every lookup when it moved. True if it did."""
        current = self.inner.generation()  # type: ignore[attr-defined]
        if current == self._generation:
            return False
        self._generation = current
        self.invalidate()  # also on the first check: lookups made before it may predate a move
        return True

    def _store(
        self, key: tuple[str, str | int | None], entry: tuple[float, Any], cache: dict[Any, Any] | None = None
    ) -> None:
        """Under the lock: keep ``entry``, dropping the oldest entries beyond the cache's bound."""
        if cache is None:
            cache, bound = self._cache, self.max_entries
        else:
            bound = self.max_missing
        cache.pop(key, None)  # re-inserted at the end: the oldest entries are the first ones
        cache[key] = entry
        if len(cache) > bound:
            for old in list(itertools.islice(cache, len(cache) - bound)):
                del cache[old]

    def resolve(self, name: str, ref: str | int | None) -> VersionInfo:
        if ref == "champion":
            ref = None
        key = (name, ref)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] >= now:
            return hit[1]
        missing = self._missing.get(key)
        if missing is not None and missing[0] >= now:
            raise NotFoundError(missing[1])
        try:
            value = _slim(self.inner.resolve(check_model_name(name), ref))
        except NotFoundError as exc:
            with self._lock:
                self._cache.pop(key, None)
                self._store(key, (now + self.ttl, exc.message), self._missing)
            raise NotFoundError(exc.message) from None
        with self._lock:
            self._missing.pop(key, None)
            self._store(key, (now + self._found_ttl, value))
        return value

    def prewarm(self) -> int:
        """Resolve every model's champion with one index read (blocking I/O), so that with thousands of
        models a first request does not wait for a lookup of its own. Returns how many were cached (at
        most ``max_entries``)."""
        versions = self.inner.index()
        expires = self._clock() + self._found_ttl
        champions = [v for v in versions if "champion" in v.aliases][: self.max_entries]
        del versions
        with self._lock:
            for v in champions:
                key = (v.name, None)
                if key not in self._cache:
                    self._store(key, (expires, _slim(v)))
        return len(champions)

    def cached(self, name: str, ref: str | int | None) -> VersionInfo | None:
        """The version ``resolve`` would answer from the cache, without I/O; None when it would not (not
        cached, expired, or cached as not found). Only names that passed ``check_model_name`` are cached."""
        hit = self._cache.get((name, None if ref == "champion" else ref))
        if hit is None or hit[0] < self._clock():
            return None
        return hit[1]

    def is_fresh(self, name: str, ref: str | int | None) -> bool:
        """Whether ``resolve`` would answer from the cache, without I/O."""
        key = (name, None if ref == "champion" else ref)
        now = self._clock()
        hit = self._cache.get(key) or self._missing.get(key)
        return hit is not None and hit[0] >= now

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()
            self._missing.clear()

    def fetch(self, digest: str) -> bytes:
        return self.inner.fetch(digest)

    def index(self) -> Sequence[VersionInfo]:
        return self.inner.index()

    def connections(self) -> tuple[int, int] | None:
        """(open, checked out) database connections of the source, where it has a pool."""
        count = getattr(self.inner, "connections", None)
        return count() if callable(count) else None


def pool_counts(pool: Any) -> tuple[int, int] | None:
    """(open, checked out) connections of a SQLAlchemy pool that keeps them (QueuePool and its kin)."""
    checkedin, checkedout = getattr(pool, "checkedin", None), getattr(pool, "checkedout", None)
    if not callable(checkedin) or not callable(checkedout):
        return None
    out = int(checkedout())
    return int(checkedin()) + out, out


# A worker needs few connections: lookups run on a few threads (serve/pools.py), plus housekeeping's
# change check and, on PostgreSQL, the alias listener. Many workers times the driver defaults (15) would
# exhaust a server's max_connections.
DB_POOL_SIZE = 2
DB_MAX_OVERFLOW = 4
DB_POOL_TIMEOUT_S = 10.0


def workspace_source(
    settings: Any, *, pool_size: int = DB_POOL_SIZE, max_overflow: int = DB_MAX_OVERFLOW
) -> ModelSource:
    """The default source of ``modelfab serve``: the workspace of ``settings``, its database pool bounded
    to ``pool_size`` connections kept open plus ``max_overflow`` more under load (PostgreSQL and other
    servers; SQLite files keep the store's settings)."""
    from modelfab.store import Workspace
    from modelfab.store.artifacts import ArtifactStore
    from modelfab.store.db import create_engine, migrate
    from modelfab.store.registry import Registry

    if pool_size < 1 or max_overflow < 0:
        raise ConfigError(
            f"the database pool needs at least 1 connection and no negative overflow, got pool size "
            f"{pool_size} and overflow {max_overflow}"
        )
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)  # the store's tuning and its errors for bad URLs
    if engine.dialect.name != "sqlite":
        import sqlalchemy as sa

        url = engine.url
        engine.dispose()
        engine = sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=DB_POOL_TIMEOUT_S,
        )
    migrate(engine, lock_dir=settings.home)
    artifacts = ArtifactStore(settings.resolved_artifact_url, settings.key_bytes())
    return WorkspaceSource(Workspace(settings, engine, Registry(engine, settings.tenant), artifacts))
