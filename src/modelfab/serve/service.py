"""The transport-neutral core both REST and gRPC call: resolve, load, check, batch, log, count."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from modelfab.errors import InvalidInputError, ModelfabError, UnavailableError
from modelfab.serve.batching import Batcher, Item
from modelfab.serve.cache import ModelCache
from modelfab.serve.metrics import ServeMetrics
from modelfab.serve.options import ServeOptions
from modelfab.serve.predlog import PredictionLog, new_prediction_id
from modelfab.serve.runtime import OnnxModel
from modelfab.serve.source import CachedSource, ModelSource, VersionInfo, check_model_name
from modelfab.serve.types import Array, InferRequest, InferResponse

__all__ = ["SERVER_EXTENSIONS", "InferenceService"]

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
    ) -> None:
        self.options = options or ServeOptions()
        self.source = CachedSource(source, ttl=self.options.resolve_ttl_s)
        self.metrics = metrics or ServeMetrics()
        self.cache = ModelCache(
            self.source.fetch,
            self.options.max_memory_bytes,
            threads_per_model=self.options.ort_threads,
            events=self.metrics,
        )
        self._executor = ThreadPoolExecutor(self.options.run_threads, thread_name_prefix="modelfab-run")
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self.predlog = (
            PredictionLog(home, worker=worker) if home is not None and self.options.log_predictions else None
        )
        self.inflight = 0
        self.ready = False
        self._housekeeper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        for name in self.options.pinned:
            try:
                await self.cache.load(await self.resolve(name, None), pin=True)
            except ModelfabError as exc:
                log.error("cannot pin model %s: %s", name, exc)
        self._housekeeper = asyncio.create_task(self._housekeeping())
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
        for b in self._batchers.values():
            b.close()
        self._executor.shutdown(wait=True)
        if self.predlog is not None:
            self.predlog.close()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.cache.sweep(self.options.idle_ttl_s)
            for key, b in list(self._batchers.items()):
                if not self.cache.is_loaded(*key) and b.depth == 0 and b.incoming == 0:
                    b.close()
                    del self._batchers[key]
                else:
                    self.metrics.queue_depth.labels(key[0], str(key[1])).set(b.depth)

    # -- lookups ---------------------------------------------------------------------------------------
    async def resolve(self, name: str, ref: str | int | None) -> VersionInfo:
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
        if b is None or b.model is not model:
            serving = info.serving or {}
            o = self.options
            mv = (info.name, str(info.version))
            sizes, reqs = self.metrics.batch_size.labels(*mv), self.metrics.batch_requests.labels(*mv)
            cpu, preds = self.metrics.cpu_seconds.labels(*mv), self.metrics.predictions.labels(*mv)

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
        records = []
        for item, outputs in zip(items, results, strict=True):
            if item.context is not None:
                pid, name, version, when = item.context
                records.append(
                    {
                        "id": pid,
                        "model": name,
                        "version": version,
                        "time": when,
                        "inputs": item.feeds,
                        "outputs": outputs,
                    }
                )
        self.predlog.write(records)

    async def infer(
        self,
        name: str,
        ref: str | int | None,
        decode: Callable[[], Awaitable[InferRequest]],
        protocol: str = "rest",
    ) -> tuple[InferResponse, InferRequest]:
        """Run one request; ``decode`` reads and decodes its body once the model is known."""
        started = time.perf_counter()
        self.inflight += 1
        mv: tuple[str, str] = (name, "" if ref is None else str(ref))
        try:
            info = await self.resolve(name, ref)
            mv = (info.name, str(info.version))
            async with self.cache.use(info) as model:
                batcher = self._batcher(info, model)
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
                sampled = self.predlog is not None and (
                    self.options.log_sample_rate >= 1.0 or random.random() < self.options.log_sample_rate
                )
                context = (pid, info.name, info.version, time.time()) if sampled else None
                try:
                    async with asyncio.timeout(self.options.request_timeout_s):
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
            self.inflight -= 1
        self.metrics.requests.labels(*mv, protocol).inc()
        self.metrics.latency.labels(*mv).observe(time.perf_counter() - started)
        resp = InferResponse(info.name, str(info.version), outputs, pid, id=req.id)
        return resp, req
