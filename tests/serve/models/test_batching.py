"""Adaptive batching: concurrent requests share ONNX Runtime calls; unbatchable models run singly."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from serve_helpers import FakeSource, MakeServer

from modelfab.errors import OverloadedError
from modelfab.serve.models.batching import Batcher, split_rows
from modelfab.serve.models.runtime import OnnxModel
from modelfab.serve.options import ServeOptions


def _model(source: FakeSource, name: str) -> OnnxModel:
    info = source.resolve(name, None)
    return OnnxModel(name, info.version, source.fetch(info.artifact_digest))


def _run_batcher(model: OnnxModel, n: int, **kw: float) -> tuple[list[object], list[tuple[int, int]]]:
    batches: list[tuple[int, int]] = []

    async def scenario() -> list[object]:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(model, pool, on_batch=lambda rows, reqs, cpu: batches.append((rows, reqs)), **kw)  # type: ignore[arg-type]
            xs = [np.full((1, 4), i, dtype=np.float32) for i in range(n)]
            out = await asyncio.gather(*(b.submit({"x": x}, 1, None) for x in xs), return_exceptions=True)
            b.close()
            return out

    return asyncio.run(scenario()), batches


def test_requests_arriving_together_form_one_batch(source: FakeSource) -> None:
    results, batches = _run_batcher(_model(source, "double"), 10, max_batch_size=64)
    assert batches == [(10, 10)]
    for i, r in enumerate(results):
        assert isinstance(r, dict)
        np.testing.assert_array_equal(r["y"], np.full((1, 4), 2 * i, dtype=np.float32))


def test_max_batch_size_splits(source: FakeSource) -> None:
    _, batches = _run_batcher(_model(source, "double"), 10, max_batch_size=4)
    assert batches == [(4, 4), (4, 4), (2, 2)]


def test_unbatchable_model_runs_one_by_one(source: FakeSource) -> None:
    model = _model(source, "fixed")
    assert not model.batchable
    results, batches = _run_batcher(model, 5, max_batch_size=64)
    assert batches == [(1, 1)] * 5
    assert all(isinstance(r, dict) for r in results)


def test_full_queue_refuses_with_overloaded(source: FakeSource) -> None:
    results, _ = _run_batcher(_model(source, "double"), 5, max_batch_size=64, queue_size=2)
    assert sum(isinstance(r, OverloadedError) for r in results) == 3
    assert sum(isinstance(r, dict) for r in results) == 2


def test_split_rows() -> None:
    out = {"a": np.arange(6).reshape(3, 2), "b": np.arange(3)}
    parts = split_rows(out, [1, 2])
    assert parts is not None
    assert parts[1]["a"].tolist() == [[2, 3], [4, 5]]
    assert parts[0]["b"].tolist() == [0]
    assert split_rows({"s": np.array(1.0)}, [1, 1]) is None


def _histogram(metrics: str, name: str, model: str) -> dict[str, float]:
    pat = re.compile(rf'^{name}_bucket{{le="([^"]+)",model="{model}",version="1"}} (\S+)$', re.M)
    return {le: float(v) for le, v in pat.findall(metrics)}


@pytest.mark.parametrize("protocol", ["rest"])
def test_batches_form_under_concurrent_http_load(make_server: MakeServer, protocol: str) -> None:
    server = make_server(ServeOptions(max_wait_ms=20, max_batch_size=32), grpc=False)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}

    async def load() -> list[int]:
        async with httpx.AsyncClient(
            base_url=f"http://{server.url}", limits=httpx.Limits(max_connections=64)
        ) as client:

            async def one() -> int:
                r = await client.post("/v2/models/double/infer", json=body)
                assert r.json()["outputs"][0]["data"] == [2, 4, 6, 8]
                return r.status_code

            codes: list[int] = []
            for _ in range(4):
                codes += await asyncio.gather(*(one() for _ in range(48)))
            return codes

    codes = asyncio.run(load())
    assert set(codes) == {200}
    metrics = httpx.get(f"http://{server.url}/metrics").text
    reqs = _histogram(metrics, "modelfab_batch_requests", "double")
    assert reqs["+Inf"] < len(codes)  # fewer ONNX Runtime calls than requests
    assert reqs["1.0"] < reqs["+Inf"]  # some calls carried more than one request


def test_overload_answers_429_without_crashing(make_server: MakeServer) -> None:
    server = make_server(ServeOptions(queue_size=1, max_batch_size=1), grpc=False)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=f"http://{server.url}", limits=httpx.Limits(max_connections=100)
        ) as client:
            return await asyncio.gather(
                *(client.post("/v2/models/digits/infer", json=body) for _ in range(100))
            )

    responses = asyncio.run(load())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}
    assert 429 in codes and 200 in codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert "queued" in refused.json()["error"]
    assert httpx.get(f"http://{server.url}/v2/health/ready").status_code == 200


def test_models_run_in_the_executor_still_batch(source: FakeSource) -> None:
    model = _model(source, "double")
    batches: list[tuple[int, int]] = []

    async def scenario() -> list[dict[str, np.ndarray]]:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(model, pool, on_batch=lambda rows, reqs, cpu: batches.append((rows, reqs)))
            b.run_seconds = 1.0  # as if measured slow: runs go to the thread pool from a task
            xs = [np.full((1, 4), i, dtype=np.float32) for i in range(6)]
            out = await asyncio.gather(*(b.submit({"x": x}, 1, None) for x in xs))
            b.close()
            return out

    results = asyncio.run(scenario())
    assert batches == [(6, 6)]
    assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(6)]


def test_expire_fails_requests_waiting_too_long(source: FakeSource) -> None:
    model = _model(source, "double")
    release = threading.Event()

    async def scenario() -> tuple[object, int, int]:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(release.wait)  # the only run thread is busy: requests wait
            b = Batcher(model, pool)
            b.run_seconds = 1.0
            pending = asyncio.ensure_future(b.submit({"x": np.ones((1, 4), dtype=np.float32)}, 1, None))
            await asyncio.sleep(0.01)
            early = b.expire(30.0)  # not late yet
            late = b.expire(30.0, now=time.monotonic() + 31.0)
            release.set()
            result = await asyncio.gather(pending, return_exceptions=True)
            b.close()
            return result[0], early, late

    result, early, late = asyncio.run(scenario())
    assert (early, late) == (0, 1)
    assert isinstance(result, TimeoutError)
