"""The transport-neutral core both REST and gRPC call: resolve, load, check, batch, log, count."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelfab.errors import InvalidInputError, ModelfabError, UnavailableError
from modelfab.serve.metrics import ServeMetrics
from modelfab.serve.models.batching import Batcher, Item
from modelfab.serve.models.cache import CacheEvents, ModelCache, trim_heap
from modelfab.serve.models.prepared import PreparedGraphs
from modelfab.serve.models.runtime import OnnxModel
from modelfab.serve.models.shared import SharedGraphs
from modelfab.serve.models.source import CachedSource, ModelSource, VersionInfo, check_model_name
from modelfab.serve.options import Plugin, ServeOptions, default_metrics, default_router, default_routes
from modelfab.serve.types import Array, InferRequest, InferResponse, Router
from modelfab.traffic.predlog import PredictionLog, encode_record, new_prediction_id

__all__ = ["SERVER_EXTENSIONS", "InferenceService", "LogContext"]

log = logging.getLogger("modelfab.serve")
SERVER_EXTENSIONS = ["binary_tensor_data", "model_repository", "prediction_id"]


class InferenceService:
    def __init__(
        self,
        source: ModelSource,
        options: ServeOptions | None = None,
        *,
        home: Path | None = None,
        worker: str = "0",
        metrics: ServeMetrics | None = None,
        settings: Any = None,
    ) -> None:
        """``settings`` (the server's Settings) is what the plug-ins of ``options`` are called with;
        without it only plug-ins other than the defaults (which need a workspace) are used."""
        self.options = options or ServeOptions()
        self.settings = settings
        self.router: Router | None = self._plug(self.options.router_factory, default_router)
        self.extra_routes: list[Any] = list(self._plug(self.options.extra_routes, default_routes) or [])
        self.extra_metrics: Callable[[], str] | None = self._plug(self.options.extra_metrics, default_metrics)
        self._shadows: set[asyncio.Task[None]] = set()
        self._batch_metrics: dict[tuple[str, int], tuple[Any, Any, Any, Any]] = {}
        self._request_metrics: dict[tuple[tuple[str, str], str], tuple[Any, Any]] = {}
        self.source = CachedSource(source, ttl=self.options.resolve_ttl_s)
        self.metrics = metrics or ServeMetrics()
        self.prepared: PreparedGraphs | None = None
        # Prepared graphs are plain ONNX on local disk: never for a workspace encrypted at rest.
        sealed = settings is not None and bool(
            getattr(settings, "encryption_key", None) or getattr(settings, "encryption_key_file", None)
        )
        if home is not None and self.options.prepared_graph_bytes > 0 and not sealed:
            folder = Path(tempfile.mkdtemp(prefix=f"prepared-w{worker}-", dir=_run_dir(home)))
            self.prepared = PreparedGraphs(folder, self.options.prepared_graph_bytes)
        self.cache = ModelCache(
            self.source.fetch,
            self.options.max_memory_bytes,
            threads_per_model=self.options.ort_threads,
            events=_CacheEvents(self),
            prepared=self.prepared,
            overhead=lambda: self.metrics.bookkeeping_bytes,
            shared=SharedGraphs(threads=self.options.ort_threads) if self.options.share_graphs else None,
        )
        self._trimmed_at = 0
        self._executor = ThreadPoolExecutor(self.options.run_threads, thread_name_prefix="modelfab-run")
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self.predlog = (
            PredictionLog(home, worker=worker) if home is not None and self.options.log_predictions else None
        )
        self.inflight = 0
        self.ready = False
        self._housekeeper: asyncio.Task[None] | None = None
        self._deadlines: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # set when the registry announces an alias move
        self._listen_stop = threading.Event()

    def _plug(self, factory: Plugin | None, default: Plugin) -> Any:
        if factory is None or (self.settings is None and factory is default):
            return None
        return factory(self.settings)

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        for name in self.options.pinned:
            try:
                await self.cache.load(await self.resolve(name, None), pin=True)
            except ModelfabError as exc:
                log.error("cannot pin model %s: %s", name, exc)
        loop = asyncio.get_running_loop()
        if self.source.watches_changes:
            # PostgreSQL tells us about alias moves at once; the poll below stays as the fallback.
            def wake() -> None:
                loop.call_soon_threadsafe(self._wake.set)

            self.source.listen(wake, self._listen_stop)
        self._housekeeper = asyncio.create_task(self._housekeeping())
        self._deadlines = asyncio.create_task(self._watch_deadlines())
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self._listen_stop.set()
        for task in (self._housekeeper, self._deadlines):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._shadows:
            await asyncio.wait(list(self._shadows), timeout=5)
        for b in self._batchers.values():
            b.close()
        self._executor.shutdown(wait=True)
        if self.predlog is not None:
            self.predlog.close()
        if self.prepared is not None:
            self.prepared.close()

    async def _prewarm_lookups(self) -> None:
        try:
            await asyncio.to_thread(self.source.prewarm)
        except Exception as exc:  # lookups then happen one by one, as without it
            log.warning("cannot read the model index to prewarm lookups: %s", exc)

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.resolve_ttl_s)
            self._wake.clear()
            if self.source.watches_changes:
                try:
                    # The first check always reports a change: that is when lookups are first prewarmed.
                    if await asyncio.to_thread(self.source.check_changes):
                        await self._prewarm_lookups()
                except Exception as exc:  # a database blip must not stop housekeeping
                    log.warning("cannot check the registry for alias changes: %s", exc)
            ticks += 1
            if ticks * self.options.resolve_ttl_s < 1.0:
                continue
            ticks = 0
            self.cache.sweep(self.options.idle_ttl_s)
            if self.cache.shared is not None:
                self.metrics.shared_graphs.set(len(self.cache.shared))
                self.metrics.shared_graph_bytes.set(self.cache.shared.resident_bytes)
            if self.cache.drops != self._trimmed_at:
                # Sessions of evicted models free many small blocks that glibc keeps; hand them back (in a
                # thread: a trim of a large heap takes milliseconds, and it drops the GIL).
                self._trimmed_at = self.cache.drops
                await asyncio.to_thread(trim_heap)
            for key, b in list(self._batchers.items()):
                if not self.cache.is_loaded(*key) and b.depth == 0 and b.incoming == 0:
                    b.close()
                    del self._batchers[key]
                    self.metrics.queue_depth.remove(key[0], str(key[1]))
                else:
                    self.metrics.queue_depth.labels(key[0], str(key[1])).set(b.depth)

    async def _watch_deadlines(self) -> None:
        """Fail requests waiting longer than the request timeout: one periodic check for all of them is
        cheaper than a timer per request, and a timeout a few percent late is still a timeout."""
        timeout = self.options.request_timeout_s
        every = min(0.5, max(0.01, timeout / 20))
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for b in list(self._batchers.values()):
                b.expire(timeout, now)

    # -- lookups ---------------------------------------------------------------------------------------
    async def resolve(self, name: str, ref: str | int | None) -> VersionInfo:
        info = self.source.cached(name, ref)
        if info is not None:
            return info
        check_model_name(name)
        if self.source.is_fresh(name, ref):
            return self.source.resolve(name, ref)
        return await asyncio.to_thread(self.source.resolve, name, ref)

    async def model(self, name: str, ref: str | int | None) -> tuple[VersionInfo, OnnxModel]:
        info = await self.resolve(name, ref)
        async with self.cache.use(info) as model:
            return info, model

    async def metadata(self, name: str, ref: str | int | None) -> dict[str, Any]:
        info, model = await self.model(name, ref)
        return {
            "name": info.name,
            "versions": [str(info.version)],
            "platform": "onnxruntime_onnx",
            "inputs": [s.as_dict() for s in model.inputs],
            "outputs": [s.as_dict() for s in model.outputs],
        }

    async def index(self) -> list[dict[str, Any]]:
        versions: Sequence[VersionInfo] = await asyncio.to_thread(self.source.index)
        out = []
        for v in versions:
            loaded = self.cache.is_loaded(v.name, v.version)
            out.append(
                {
                    "name": v.name,
                    "version": str(v.version),
                    "state": "READY" if loaded else "UNLOADED",
                    "reason": "" if loaded else "loads on first request",
                }
            )
        return out

    async def load(self, name: str) -> None:
        await self.cache.load(await self.resolve(name, None), pin=True)

    async def unload(self, name: str) -> None:
        check_model_name(name)
        await asyncio.to_thread(self.source.resolve, name, None)  # 404 for unknown models
        self.cache.unload(name)

    # -- inference -------------------------------------------------------------------------------------
    def _batcher(self, info: VersionInfo, model: OnnxModel) -> Batcher:
        key = (info.name, info.version)
        b = self._batchers.get(key)
        if b is None or b.model is not model:  # a replaced batcher's task ends once its queue drains
            serving = info.serving or {}
            o = self.options
            children = self._batch_metrics.get(key)
            if children is None:  # kept across evictions: with many models, label lookups add up
                mv = (info.name, str(info.version))
                m = self.metrics
                children = (
                    m.batch_size.labels(*mv),
                    m.batch_requests.labels(*mv),
                    m.cpu_seconds.labels(*mv),
                    m.predictions.labels(*mv),
                )
                self._batch_metrics[key] = children
            sizes, reqs, cpu, preds = children

            def on_batch(rows: int, n: int, cpu_s: float) -> None:
                sizes.observe(rows)
                reqs.observe(n)
                cpu.inc(cpu_s)
                preds.inc(rows)

            b = Batcher(
                model,
                self._executor,
                max_batch_size=int(serving.get("max_batch_size", o.max_batch_size)),
                max_wait=float(serving.get("max_wait_ms", o.max_wait_ms)) / 1000.0,
                queue_size=int(serving.get("queue_size", o.queue_size)),
                after_run=self._log_predictions if self.predlog is not None else None,
                on_batch=on_batch,
            )
            self._batchers[key] = b
        return b

    def _log_predictions(self, items: Sequence[Item], results: Sequence[dict[str, Array]]) -> None:
        assert self.predlog is not None
        lines = []
        for item, outputs in zip(items, results, strict=True):
            ctx: LogContext | None = item.context
            if ctx is not None:
                record = {
                    "id": ctx.prediction_id,
                    "model": ctx.model,
                    "version": ctx.version,
                    "time": ctx.time,
                    "request_key": ctx.request_key,
                    "shadow": ctx.shadow,
                    "inputs": item.feeds,
                    "outputs": outputs,
                }
                lines.append(encode_record(record))
        if lines:
            self.predlog.write_lines(lines)

    def _route(self, name: str, ref: str | int | None, key: str | None) -> tuple[str | int | None, Any]:
        """The version that answers and the shadow version (or None) for a request naming ``ref``."""
        if self.router is None or ref not in (None, "champion"):
            return ref, None
        try:
            decision = self.router.route(name, key)
        except ModelfabError:
            raise
        except Exception:
            log.exception("the deployment router failed; answering with the champion")
            return ref, None
        return decision.serve, decision.shadow

    def _sampled(self) -> bool:
        if self.predlog is None:
            return False
        rate = self.options.log_sample_rate
        return rate >= 1.0 or random.random() < rate

    async def _shadow(self, name: str, ref: str | int, req: InferRequest, ctx: LogContext) -> None:
        """Score a request with a shadow version for the prediction log only; failures stay here."""
        try:
            info = await self.resolve(name, ref)
            async with self.cache.use(info) as model:
                rows = model.check(req.inputs)
                ctx = replace(ctx, version=info.version)
                async with asyncio.timeout(self.options.request_timeout_s):
                    await self._batcher(info, model).submit(req.inputs, rows, None, ctx)
        except Exception as exc:
            self.metrics.errors.labels(name, str(ref), "shadow").inc()
            log.warning("shadow scoring of model %s version %s failed: %s", name, ref, exc)

    async def infer(
        self,
        name: str,
        ref: str | int | None,
        decode: Callable[[], Awaitable[InferRequest]],
        protocol: str = "rest",
        *,
        request_key: str | None = None,
    ) -> tuple[InferResponse, InferRequest]:
        """Run one request; ``decode`` reads and decodes its body once the model is known.

        A request naming no version (or ``champion``) is routed: the router picks the version that answers
        (sticky per ``request_key``: the ``X-Request-Key`` header or ``parameters.request_key``) and maybe a
        shadow version that scores it for the prediction log only.
        """
        started = time.perf_counter()
        self.inflight += 1
        mv: tuple[str, str] = (name, "" if ref is None else str(ref))
        shadow: str | int | None = None
        req: InferRequest | None = None
        held: tuple[str, int] | None = None
        try:
            if self.router is not None and ref in (None, "champion"):
                check_model_name(name)
                req = await decode()
                if request_key is None:
                    key = req.parameters.get("request_key")
                    request_key = key if isinstance(key, str) else None
                ref, shadow = self._route(name, ref, request_key)
            info = self.source.cached(name, ref) or await self.resolve(name, ref)
            mv = (info.name, str(info.version))
            model = self.cache.hold((info.name, info.version))
            if model is None:
                model = await self.cache.acquire(info)
            held = (info.name, info.version)
            batcher = self._batcher(info, model)
            if req is None:
                batcher.incoming += 1
                try:
                    req = await decode()
                finally:
                    batcher.incoming -= 1
            rows = model.check(req.inputs)
            wanted: tuple[str, ...] | None = None
            if req.outputs:
                wanted = tuple(o.name for o in req.outputs)
                for o in wanted:
                    if o not in model.output_names:
                        have = ", ".join(model.output_names)
                        raise InvalidInputError(f"unknown output '{o}'; model {info.name} has: {have}")
            pid = new_prediction_id()
            context = (
                LogContext(pid, info.name, info.version, time.time(), request_key)
                if self._sampled()
                else None
            )
            if shadow is not None and context is not None and shadow != info.version:
                # Same prediction id, marked shadow: the loop compares both answers to one request.
                task = asyncio.create_task(
                    self._shadow(info.name, shadow, req, replace(context, shadow=True))
                )
                self._shadows.add(task)
                task.add_done_callback(self._shadows.discard)
            try:
                # The request timeout is enforced by the deadline watch (see ``_watch_deadlines``).
                outputs = await batcher.submit(req.inputs, rows, wanted, context)
            except TimeoutError:
                raise UnavailableError(
                    f"model {info.name} did not answer within {self.options.request_timeout_s}s"
                ) from None
        except ModelfabError as exc:
            self.metrics.errors.labels(*mv, str(exc.status_code)).inc()
            raise
        except Exception as exc:
            self.metrics.errors.labels(*mv, "500").inc()
            log.exception("inference failed for model %s", name)
            raise ModelfabError(f"internal error while serving model {name}") from exc
        finally:
            if held is not None:
                self.cache.release(held)
            self.inflight -= 1
        counters = self._request_metrics.get((mv, protocol))
        if counters is None:  # resolving label children costs more than the update itself
            counters = (self.metrics.requests.labels(*mv, protocol), self.metrics.latency.labels(*mv))
            self._request_metrics[(mv, protocol)] = counters
        counters[0].inc()
        counters[1].observe(time.perf_counter() - started)
        resp = InferResponse(info.name, str(info.version), outputs, pid, id=req.id)
        return resp, req


def _run_dir(home: Path) -> Path:
    folder = Path(home) / "run"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _CacheEvents(CacheEvents):
    """Counts loads and evictions, and drops an evicted model's batcher with it."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    def loaded(self, name: str, version: int, size: int, seconds: float) -> None:
        self._service.metrics.loaded(name, version, size, seconds)

    def evicted(self, name: str, version: int, size: int, reason: str) -> None:
        self._service.metrics.evicted(name, version, size, reason)
        # Idle (the cache never evicts a model with requests in flight), so its loop task has ended too.
        self._service._batchers.pop((name, version), None)
        self._service.metrics.queue_depth.remove(name, str(version))


@dataclass(slots=True)  # not frozen: one is made per request, and frozen dataclasses are slower to make
class LogContext:
    """What the prediction log records about a request besides its tensors."""

    prediction_id: str
    model: str
    version: int
    time: float
    request_key: str | None = None
    shadow: bool = False
