"""The request path both REST and gRPC call: resolve (route, look up) -> acquire (load, hold) -> run (check,
batch, record, count). Batchers, the prediction recorder and background upkeep live beside it."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from modelfab.errors import InvalidInputError, ModelfabError, UnavailableError
from modelfab.serve.batchers import Batchers
from modelfab.serve.housekeeping import Housekeeper
from modelfab.serve.metrics import ServeMetrics
from modelfab.serve.models.cache import CacheEvents, ModelCache
from modelfab.serve.models.prepared import PreparedGraphs
from modelfab.serve.models.providers import Providers
from modelfab.serve.models.runtime import OnnxModel
from modelfab.serve.models.shared import SharedGraphs
from modelfab.serve.models.source import CachedSource, ModelSource, VersionInfo, check_model_name
from modelfab.serve.options import Plugin, ServeOptions, default_metrics, default_router, default_routes
from modelfab.serve.pools import Pools, run_in
from modelfab.serve.recording import LogContext, Recorder
from modelfab.serve.types import InferRequest, InferResponse, Router
from modelfab.traffic.predlog import new_prediction_id

__all__ = ["SERVER_EXTENSIONS", "InferenceService", "LogContext", "Peers"]

log = logging.getLogger("modelfab.serve")
SERVER_EXTENSIONS = ["binary_tensor_data", "model_repository", "prediction_id"]


class Peers(Protocol):
    """The other workers of the server (see :mod:`modelfab.serve.workers.control`)."""

    async def fan_out(self, op: str, name: str) -> None:
        """Apply repository ``op`` (load, unload) to ``name`` on every other worker; raise when one did
        not."""
        ...


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
        self._request_metrics: dict[tuple[tuple[str, str], str], tuple[Any, Any]] = {}
        self.source = CachedSource(source, ttl=self.options.resolve_ttl_s)
        self.metrics = metrics or ServeMetrics()
        self.worker = worker
        self.pools = Pools()
        # Set by a worker process of a multi-worker server: repository load/unload then reach every worker.
        self.peers: Peers | None = None
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
            load_executor=self.pools.load,
            providers=Providers(self.options.providers or None),
        )
        self._executor = ThreadPoolExecutor(self.options.run_threads, thread_name_prefix="modelfab-run")
        key_bytes = getattr(settings, "key_bytes", None)
        self.recorder = Recorder(
            home,
            worker,
            enabled=self.options.log_predictions,
            sample_rate=self.options.log_sample_rate,
            key=key_bytes() if key_bytes is not None else None,
        )
        self.batchers = Batchers(
            self.options,
            self.metrics,
            self._executor,
            self.recorder.write if self.recorder.log is not None else None,
        )
        self.inflight = 0
        self.ready = False
        self._housekeeper = Housekeeper(self)

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
        self._housekeeper.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self._housekeeper.stop()
        if self._shadows:
            await asyncio.wait(list(self._shadows), timeout=5)
        self.batchers.close()
        self._executor.shutdown(wait=True)
        self.pools.close()
        self.recorder.close()
        if self.prepared is not None:
            self.prepared.close()

    # -- lookups ---------------------------------------------------------------------------------------
    async def resolve(self, name: str, ref: str | int | None) -> VersionInfo:
        info = self.source.cached(name, ref)
        if info is not None:
            return info
        check_model_name(name)
        if self.source.is_fresh(name, ref):
            return self.source.resolve(name, ref)
        return await run_in(self.pools.lookup, self.source.resolve, name, ref)

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
            # OIP parameters take scalars: the session's execution providers, in order, comma-separated.
            "parameters": {"execution_providers": ",".join(model.providers)},
        }

    async def index(self) -> list[dict[str, Any]]:
        versions: Sequence[VersionInfo] = await run_in(self.pools.lookup, self.source.index)
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
        """Load and pin ``name`` in every worker (repository extension)."""
        await self.apply_repository("load", name)
        if self.peers is not None:
            await self.peers.fan_out("load", name)

    async def unload(self, name: str) -> None:
        """Unpin and unload ``name`` in every worker (repository extension)."""
        await self.apply_repository("unload", name)
        if self.peers is not None:
            await self.peers.fan_out("unload", name)

    async def apply_repository(self, op: str, name: str) -> None:
        """Repository ``op`` (``load`` or ``unload``) in this worker only."""
        if op == "load":
            await self.cache.load(await self.resolve(name, None), pin=True)
        elif op == "unload":
            check_model_name(name)
            await run_in(self.pools.lookup, self.source.resolve, name, None)  # 404 for unknown models
            self.cache.unload(name)
        else:
            raise InvalidInputError(f"unknown repository operation {op!r}; use load or unload")

    def set_memory_budget(self, budget_bytes: int) -> None:
        """This worker's share of the server's model memory changed (workers were added or removed)."""
        if budget_bytes == self.cache.budget:
            return
        dropped = self.cache.resize(budget_bytes)
        log.info(
            "model memory budget is now %d bytes per worker; %d model(s) unloaded to fit",
            budget_bytes,
            len(dropped),
        )
        self.refresh_gauges()

    def refresh_gauges(self) -> None:
        """Gauges read from state rather than updated as it changes: the memory budget and the source's
        database connections. Cheap; called by the worker's reporter every tick."""
        self.metrics.memory_budget.labels(self.worker).set(self.cache.budget)
        pool = self.source.connections()
        if pool is not None:
            opened, checked_out = pool
            self.metrics.db_connections.labels(self.worker, "registry", "open").set(opened)
            self.metrics.db_connections.labels(self.worker, "registry", "checked_out").set(checked_out)

    # -- inference -------------------------------------------------------------------------------------
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

    async def _shadow(self, name: str, ref: str | int, req: InferRequest, ctx: LogContext) -> None:
        """Score a request with a shadow version for the prediction log only; failures stay here."""
        try:
            info = await self.resolve(name, ref)
            async with self.cache.use(info) as model:
                rows = model.check(req.inputs)
                ctx = replace(ctx, version=info.version)
                async with asyncio.timeout(self.options.request_timeout_s):
                    await self.batchers.get(info, model).submit(req.inputs, rows, None, ctx)
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
        mv: tuple[str, str] | None = None  # labels once the version is known: never the client's words
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
            batcher = self.batchers.get(info, model)
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
                if self.recorder.sampled()
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
            self._count_error(name, ref, mv, str(exc.status_code))
            raise
        except Exception as exc:
            self._count_error(name, ref, mv, "500")
            log.exception("inference failed for model %s", name)
            raise ModelfabError(f"internal error while serving model {name}") from exc
        finally:
            if held is not None:
                self.cache.release(held)
            self.inflight -= 1
        assert mv is not None
        counters = self._request_metrics.get((mv, protocol))
        if counters is None:  # resolving label children costs more than the update itself
            counters = (self.metrics.requests.labels(*mv, protocol), self.metrics.latency.labels(*mv))
            self._request_metrics[(mv, protocol)] = counters
        counters[0].inc()
        counters[1].observe(time.perf_counter() - started)
        resp = InferResponse(info.name, str(info.version), outputs, pid, id=req.id)
        return resp, req

    def _count_error(self, name: str, ref: str | int | None, mv: tuple[str, str] | None, code: str) -> None:
        if mv is None:  # failed before resolving; a version resolved earlier still gets its own series
            info = self.source.cached(name, ref)
            if info is None:
                self.metrics.unknown.labels(code).inc()
                return
            mv = (info.name, str(info.version))
        self.metrics.errors.labels(*mv, code).inc()


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
        self._service.batchers.drop(name, version)

    def placed(self, name: str, version: int, providers: tuple[str, ...]) -> None:
        self._service.metrics.placed(name, version, providers)
