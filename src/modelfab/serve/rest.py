"""OIP v2 REST on Starlette: routes, body limits, and one error shape ``{"error": "..."}``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelfab.errors import InvalidInputError, ModelfabError, OverloadedError, PayloadTooLargeError
from modelfab.serve.codec_rest import decode_request, encode_response
from modelfab.serve.metrics import CONTENT_TYPE
from modelfab.serve.service import SERVER_EXTENSIONS, InferenceService
from modelfab.serve.source import parse_ref
from modelfab.serve.types import InferRequest

__all__ = ["create_app", "error_response"]

log = logging.getLogger("modelfab.serve")
JSON = "application/json"
Handler = Callable[[Request], Awaitable[Response]]


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


def error_response(exc: BaseException) -> Response:
    """The OIP error body for any exception; unexpected ones never show their details."""
    if isinstance(exc, ModelfabError):
        resp = _json({"error": exc.message}, exc.status_code)
        if isinstance(exc, OverloadedError):
            resp.headers["retry-after"] = str(max(1, round(exc.retry_after)))
        elif exc.status_code == 503:
            resp.headers["retry-after"] = "1"
        return resp
    if isinstance(exc, HTTPException):
        return _json({"error": str(exc.detail)}, exc.status_code)
    log.error("unexpected error answering a request", exc_info=exc)
    return _json({"error": "internal server error; the server log has the details"}, 500)


def _guard(fn: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except Exception as exc:
            return error_response(exc)

    return endpoint


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them where possible."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes is over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: InferenceService) -> Starlette:
    """The ASGI app of one worker around an :class:`InferenceService`."""
    limit = service.options.max_body_bytes
    server_meta = orjson.dumps(
        {"name": service.options.server_name, "version": _version(), "extensions": SERVER_EXTENSIONS}
    )

    async def server_metadata(request: Request) -> Response:
        return Response(server_meta, media_type=JSON)

    async def live(request: Request) -> Response:
        return Response(b"", status_code=200)

    async def ready(request: Request) -> Response:
        return Response(b"", status_code=200 if service.ready else 503)

    async def model_metadata(request: Request) -> Response:
        p = request.path_params
        return _json(await service.metadata(p["model"], parse_ref(p.get("version"))))

    async def model_ready(request: Request) -> Response:
        p = request.path_params
        await service.model(p["model"], parse_ref(p.get("version")))
        return Response(b"", status_code=200)

    async def infer(request: Request) -> Response:
        p = request.path_params
        header = request.headers.get("inference-header-content-length")
        if header is not None and not header.isdigit():
            raise InvalidInputError(f"Inference-Header-Content-Length {header[:20]!r} is not a number")

        async def decode() -> InferRequest:
            body = await read_body(request, limit)
            return decode_request(body, int(header) if header is not None else None)

        resp, req = await service.infer(p["model"], parse_ref(p.get("version")), decode)
        body, header_len = encode_response(resp, req.outputs, req.binary_outputs)
        headers = {"x-prediction-id": resp.prediction_id}
        if header_len is None:
            return Response(body, headers=headers, media_type=JSON)
        headers["inference-header-content-length"] = str(header_len)
        return Response(body, headers=headers, media_type="application/octet-stream")

    async def repo_index(request: Request) -> Response:
        return _json(await service.index())

    async def repo_load(request: Request) -> Response:
        await service.load(request.path_params["model"])
        return Response(b"", status_code=200)

    async def repo_unload(request: Request) -> Response:
        await service.unload(request.path_params["model"])
        return Response(b"", status_code=200)

    async def metrics(request: Request) -> Response:
        return Response(await asyncio.to_thread(service.metrics.render), media_type=CONTENT_TYPE)

    g = _guard
    routes = [
        Route("/v2", g(server_metadata), methods=["GET"]),
        Route("/v2/health/live", g(live), methods=["GET"]),
        Route("/v2/health/ready", g(ready), methods=["GET"]),
        Route("/v2/models/{model}", g(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/ready", g(model_ready), methods=["GET"]),
        Route("/v2/models/{model}/infer", g(infer), methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}", g(model_metadata), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", g(model_ready), methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/infer", g(infer), methods=["POST"]),
        Route("/v2/repository/index", g(repo_index), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", g(repo_load), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", g(repo_unload), methods=["POST"]),
        Route("/metrics", g(metrics), methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    async def http_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelfab")
    except PackageNotFoundError:
        return "0.1.0"
