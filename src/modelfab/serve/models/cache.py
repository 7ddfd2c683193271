"""Loaded models in an LRU bounded by bytes, with single-flight loading, pins and an idle TTL.

Everything here runs on the worker's event loop thread except the load of a model that is not small (fetch,
digest check, session build), which runs in a thread; so the bookkeeping needs no locks.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from modelfab.errors import IntegrityError, ModelfabError, OverloadedError, UnavailableError
from modelfab.serve.models.prepared import PreparedGraphs
from modelfab.serve.models.providers import CPU_ONLY, Providers
from modelfab.serve.models.runtime import OnnxModel, session_overhead_bytes
from modelfab.serve.models.shared import SharedGraphs
from modelfab.serve.models.source import VersionInfo

__all__ = ["Candidate", "ModelCache", "choose_evictions", "idle_keys", "trim_heap"]

log = logging.getLogger("modelfab.serve")
Key = tuple[str, int]
INLINE_LOAD_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Candidate:
    key: Key
    size: int
    last_used: float
    busy: bool


def choose_evictions(
    entries: Iterable[Candidate], used: int, budget: int, incoming: int, *, ordered: bool = False
) -> list[Key] | None:
    """Least recently used idle entries to drop so ``incoming`` bytes fit; None when they cannot fit.

    ``ordered``: ``entries`` already come least recently used first, and are read only as far as needed.
    """
    need = used + incoming - budget
    if need <= 0:
        return []
    chosen: list[Key] = []
    idle = (c for c in entries if not c.busy)
    for c in idle if ordered else sorted(idle, key=lambda c: c.last_used):
        chosen.append(c.key)
        need -= c.size
        if need <= 0:
            return chosen
    return None


_libc: Any = None


def trim_heap() -> bool:
    """Return freed heap memory to the system (glibc's ``malloc_trim``); False where there is none."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                lib.malloc_trim.restype = ctypes.c_int
                _libc = lib
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                pass
    if _libc is False:
        return False
    _libc.malloc_trim(0)
    return True


def idle_keys(entries: Sequence[Candidate], now: float, ttl: float) -> list[Key]:
    """Entries idle for longer than ``ttl`` seconds and not busy (scale to zero per model); a ``ttl`` of 0
    (or less) means models never unload for idleness."""
    if ttl <= 0:
        return []
    return [c.key for c in entries if not c.busy and now - c.last_used > ttl]


@dataclass(slots=True)
class _Entry:
    info: VersionInfo
    size: int
    model: OnnxModel | None = None
    last_used: float = field(default_factory=time.monotonic)
    inflight: int = 0
    pinned: bool = False


def _retrieve(task: asyncio.Task[OnnxModel]) -> None:
    # Waiters re-raise the error themselves; this only keeps asyncio from logging it as unretrieved.
    if not task.cancelled():
        task.exception()


class CacheEvents:
    """Hooks the cache calls; metrics subclass it."""

    def loaded(self, name: str, version: int, size: int, seconds: float) -> None: ...
    def evicted(self, name: str, version: int, size: int, reason: str) -> None: ...
    def placed(self, name: str, version: int, providers: tuple[str, ...]) -> None:
        """A loaded model runs on these execution providers (called right after :meth:`loaded`)."""


class ModelCache:
    def __init__(
        self,
        fetch: Callable[[str], bytes],
        budget_bytes: int,
        *,
        threads_per_model: int = 1,
        events: CacheEvents | None = None,
        failure_ttl: float = 5.0,
        prepared: PreparedGraphs | None = None,
        overhead: Callable[[], int] | None = None,
        shared: SharedGraphs | None = None,
        load_executor: Executor | None = None,
        providers: Providers | None = None,
    ) -> None:
        """``prepared``: where small models that load again and again keep their optimized graphs.
        ``overhead``: bytes of the budget taken by other things (per-model bookkeeping), read at each load.
        ``shared``: small models that differ only in their weights run on one session (:mod:`.shared`);
        the shared sessions count against the budget. ``load_executor``: where models too big to load on
        the event loop load (None: the loop's default executor). ``providers``: which execution providers
        each model's session runs on (None: CPU only)."""
        self._providers = providers
        self._load_executor = load_executor
        self._overhead = overhead
        self.shared = shared
        self._fetch = fetch
        self._prepared = prepared
        self.budget = budget_bytes
        self._threads = threads_per_model
        self._events = events or CacheEvents()
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._loading: dict[Key, asyncio.Task[OnnxModel]] = {}
        self._failures: dict[Key, tuple[float, ModelfabError]] = {}
        self._failure_ttl = failure_ttl
        self._pinned_names: set[str] = set()
        self.used = 0
        self.drops = 0  # models dropped so far (the service trims the heap after drops)

    # -- queries ---------------------------------------------------------------------------------------
    def loaded(self) -> list[tuple[str, int]]:
        return [k for k, e in self._entries.items() if e.model is not None]

    def is_loaded(self, name: str, version: int) -> bool:
        e = self._entries.get((name, version))
        return e is not None and e.model is not None

    def _candidates(self) -> Iterator[Candidate]:
        """Entries least recently used first (``use`` moves an entry to the end)."""
        for k, e in self._entries.items():
            yield Candidate(k, e.size, e.last_used, e.inflight > 0 or e.pinned or e.model is None)

    # -- use -------------------------------------------------------------------------------------------
    @asynccontextmanager
    async def use(self, info: VersionInfo) -> AsyncIterator[OnnxModel]:
        """Hold a loaded model for one request; it cannot be evicted until the block exits."""
        model = await self.acquire(info)
        try:
            yield model
        finally:
            self.release((info.name, info.version))

    def hold(self, key: Key) -> OnnxModel | None:
        """Hold ``key`` for one request if it is loaded (no await: the hot path); None when it is not.
        Every model held must be given back with :meth:`release`."""
        entry = self._entries.get(key)
        if entry is None or entry.model is None:
            return None
        entry.inflight += 1
        entry.last_used = time.monotonic()
        self._entries.move_to_end(key)
        return entry.model

    async def acquire(self, info: VersionInfo) -> OnnxModel:
        """Load ``info`` if needed and hold it, like :meth:`hold`."""
        key = (info.name, info.version)
        while True:
            model = self.hold(key)
            if model is not None:
                return model
            await self._load(info)

    def release(self, key: Key) -> None:
        # A held entry is never dropped (eviction, unload and sweeps skip busy ones), so it is still here.
        entry = self._entries[key]
        entry.inflight -= 1
        entry.last_used = time.monotonic()

    async def _load(self, info: VersionInfo) -> None:
        key = (info.name, info.version)
        task = self._loading.get(key)
        if task is None:
            failed = self._failures.get(key)
            if failed is not None and failed[0] > time.monotonic():
                raise failed[1]
            size = max(int(info.artifact_size), 0) + session_overhead_bytes
            if size > self.budget:
                raise UnavailableError(
                    f"model {info.name} version {info.version} needs about {size} bytes but the memory "
                    f"budget is {self.budget}; raise --max-memory"
                )
            if 0 <= info.artifact_size < INLINE_LOAD_BYTES:
                # A small model loads in well under a millisecond: a thread hop, and threads fighting the
                # event loop for the GIL, would cost more (and add tail latency) than loading it here. It
                # is synchronous, so no other request can see it half loaded: no task, no waiting. Built
                # first, so room is made for what it really holds (far less than a session when shared).
                self._load_inline(info)
                return
            self._make_room(size)
            entry = _Entry(info=info, size=size, pinned=info.name in self._pinned_names)
            self._entries[key] = entry
            self.used += size
            # A task, so a client hanging up does not cancel a load others are waiting on.
            task = asyncio.create_task(self._load_into(entry))
            task.add_done_callback(_retrieve)
            self._loading[key] = task
        await asyncio.shield(task)

    def _load_inline(self, info: VersionInfo) -> None:
        key = (info.name, info.version)
        started = time.monotonic()
        try:
            model = self._build(info)
        except Exception as exc:
            raise self._remember_failure(key, exc) from None
        try:
            self._make_room(model.resident_bytes)
        except ModelfabError:  # a full budget is not the model's fault: nothing to remember
            self._discard(model)
            raise
        entry = _Entry(info=info, size=model.resident_bytes, pinned=info.name in self._pinned_names)
        self._entries[key] = entry
        self.used += entry.size
        self._loaded(entry, model, started)

    async def _load_into(self, entry: _Entry) -> OnnxModel:
        started = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(self._load_executor, self._build, entry.info)
        except Exception as exc:
            raise self._failed(entry, exc) from None
        finally:
            self._loading.pop((entry.info.name, entry.info.version), None)
        self._loaded(entry, model, started)
        return model

    def _failed(self, entry: _Entry, exc: Exception) -> ModelfabError:
        """Forget a load that failed, and remember the error a few seconds (no retry storm)."""
        key = (entry.info.name, entry.info.version)
        if self._entries.get(key) is entry:
            del self._entries[key]
            self.used -= entry.size
        return self._remember_failure(key, exc)

    def _remember_failure(self, key: Key, exc: Exception) -> ModelfabError:
        err = exc if isinstance(exc, ModelfabError) else UnavailableError(f"loading failed: {exc}")
        self._failures[key] = (time.monotonic() + self._failure_ttl, err)
        return err

    def _loaded(self, entry: _Entry, model: OnnxModel, started: float) -> None:
        info = entry.info
        key = (info.name, info.version)
        if self._entries.get(key) is entry:
            self.used += model.resident_bytes - entry.size
            entry.size = model.resident_bytes
            entry.model = model
        self._failures.pop(key, None)
        self._events.loaded(info.name, info.version, model.resident_bytes, time.monotonic() - started)
        self._events.placed(info.name, info.version, model.providers)

    def _build(self, info: VersionInfo) -> OnnxModel:
        wanted = CPU_ONLY
        if self._providers is not None:
            wanted = self._providers.for_model(info.name, info.serving)
        model = self._build_on(info, wanted)
        if self._providers is not None:
            self._providers.settled(info.name, wanted, model.providers)
        return model

    def _build_on(self, info: VersionInfo, providers: tuple[str, ...]) -> OnnxModel:
        digest = info.artifact_digest
        small = 0 <= info.artifact_size < INLINE_LOAD_BYTES
        data: bytes | None = None
        # Only small models, which load on the loop thread: shared and prepared graphs are not thread-safe.
        if small and self.shared is not None and self.shared.shareable(digest):
            data = self._fetch_checked(info)
            model = self.shared.load(info.name, info.version, digest, data, providers)
            if model is not None:
                return model
        # A graph optimized at the extended level is specific to the providers it was optimized for (ONNX
        # Runtime assigns fused nodes to them): prepared graphs are for CPU-only sessions.
        prepared = self._prepared if small and providers == CPU_ONLY else None
        if prepared is not None:
            graph = prepared.get(digest)
            if graph is not None:
                return OnnxModel(info.name, info.version, graph, threads=self._threads, optimized=True)
        if data is None:
            data = self._fetch_checked(info)
        if prepared is not None and prepared.should_prepare(digest):
            staged = prepared.staging_path(digest)
            try:
                model = OnnxModel(info.name, info.version, data, threads=self._threads, save_optimized=staged)
            except ModelfabError:
                prepared.refuse(digest)  # and load it as it is, which says what is wrong if it cannot load
            else:
                prepared.adopt(digest)
                return model
        return OnnxModel(info.name, info.version, data, threads=self._threads, providers=providers)

    def _fetch_checked(self, info: VersionInfo) -> bytes:
        try:
            return self._fetch(info.artifact_digest)
        except IntegrityError as exc:
            log.error(
                "refusing model %s version %s: artifact %s failed its digest check (%s)",
                info.name,
                info.version,
                info.artifact_digest[:12],
                exc,
            )
            raise UnavailableError(
                f"model {info.name} version {info.version} is unavailable: its artifact failed the "
                "sha256 check and was refused"
            ) from None
        except ModelfabError as exc:
            if exc.status_code == 404:
                raise
            log.error("cannot load model %s version %s: %s", info.name, info.version, exc)
            raise UnavailableError(
                f"model {info.name} version {info.version} is unavailable: {exc}"
            ) from None

    def _make_room(self, incoming: int) -> None:
        used = self._held()
        if used + incoming <= self.budget:
            return
        victims = choose_evictions(self._candidates(), used, self.budget, incoming, ordered=True)
        if victims is None and self.shared is not None and self.shared.drop_idle():
            self._make_room(incoming)
            return
        if victims is None:
            if used - self.used + incoming > self.budget:
                raise UnavailableError(
                    f"the memory budget of {self.budget} bytes is taken by the bookkeeping of models seen so "
                    f"far ({used - self.used} bytes); raise --max-memory"
                )
            raise OverloadedError(
                "the model memory budget is full of models in use; retry shortly", retry_after=1.0
            )
        for key in victims:
            self._drop(key, "lru")

    def _drop(self, key: Key, reason: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.used -= entry.size
        self.drops += 1
        if entry.model is not None:
            self._discard(entry.model)
        entry.model = None
        self._events.evicted(key[0], key[1], entry.size, reason)

    def _discard(self, model: OnnxModel) -> None:
        if model.shared_key is not None and self.shared is not None:
            self.shared.release(model)

    # -- management ------------------------------------------------------------------------------------
    async def load(self, info: VersionInfo, *, pin: bool = True) -> None:
        """Load now (repository extension); pinned models are never evicted or expired."""
        if pin:
            self._pinned_names.add(info.name)
        async with self.use(info):
            pass
        for (name, _), entry in self._entries.items():
            if name == info.name:
                entry.pinned = pin or entry.pinned

    def unload(self, name: str) -> int:
        """Unpin and drop every idle loaded version of ``name``; returns how many were dropped."""
        self._pinned_names.discard(name)
        dropped = 0
        for key, entry in list(self._entries.items()):
            if key[0] == name:
                entry.pinned = False
                if entry.inflight == 0 and entry.model is not None:
                    self._drop(key, "unload")
                    dropped += 1
        return dropped

    def resize(self, budget_bytes: int) -> list[Key]:
        """Take a new budget (the server's memory divided anew among its workers): drop least recently
        used idle models until what is held fits. Models in use and pinned ones stay; loads make room as
        they become idle. Returns the keys dropped."""
        self.budget = budget_bytes
        used = self._held()
        if used <= budget_bytes:
            return []
        victims = choose_evictions(self._candidates(), used, budget_bytes, 0, ordered=True)
        if victims is None:  # cannot fit now: drop every idle model, the rest when it can go
            victims = [c.key for c in self._candidates() if not c.busy]
        for key in victims:
            self._drop(key, "budget")
        if self.shared is not None and self._held() > budget_bytes:
            self.shared.drop_idle()
        return victims

    def _held(self) -> int:
        """Bytes counted against the budget: models, per-model bookkeeping and shared sessions."""
        used = self.used + (self._overhead() if self._overhead is not None else 0)
        if self.shared is not None:
            used += self.shared.resident_bytes
        return used

    def sweep(self, ttl: float, now: float | None = None) -> list[Key]:
        """Unload models idle longer than ``ttl`` (0: never)."""
        keys = idle_keys(list(self._candidates()), time.monotonic() if now is None else now, ttl)
        for key in keys:
            self._drop(key, "idle")
        return keys
