"""OIP v2 REST on Starlette: routes, body limits, and one error shape ``{"error": "..."}``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelfab.errors import InvalidInputError, ModelfabError, OverloadedError, PayloadTooLargeError
from modelfab.serve.metrics import CONTENT_TYPE
from modelfab.serve.models.source import parse_ref
from modelfab.serve.service import SERVER_EXTENSIONS, InferenceService
from modelfab.serve.transport.codec_rest import decode_request, encode_response
from modelfab.serve.transport.http1 import Reply
from modelfab.serve.transport.http1 import Request as RawRequest
from modelfab.serve.types import InferRequest

__all__ = ["create_app", "error_reply", "error_response", "fast_infer"]

log = logging.getLogger("modelfab.serve")
JSON = "application/json"
_JSON_HEAD = b"content-type: application/json\r\n"
Handler = Callable[[Request], Awaitable[Response]]


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


def error_reply(exc: BaseException) -> Reply:
    """Status, headers and OIP error body for any exception; unexpected ones never show their details."""
    if isinstance(exc, ModelfabError):
        head = _JSON_HEAD
        if isinstance(exc, OverloadedError):
            head += b"retry-after: %d\r\n" % max(1, round(exc.retry_after))
        elif exc.status_code == 503:
            head += b"retry-after: 1\r\n"
        return exc.status_code, head, orjson.dumps({"error": exc.message})
    if isinstance(exc, HTTPException):
        return exc.status_code, _JSON_HEAD, orjson.dumps({"error": str(exc.detail)})
    log.error("unexpected error answering a request", exc_info=exc)
    return 500, _JSON_HEAD, orjson.dumps({"error": "internal server error; the server log has the details"})


def error_response(exc: BaseException) -> Response:
    """:func:`error_reply` as a Starlette response."""
    status, head, body = error_reply(exc)
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        if line:
            k, _, v = line.partition(": ")
            headers[k] = v
    return Response(body, status_code=status, headers=headers)


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
    """The ASGI app of one worker around an :class:`InferenceService` (which the worker starts and stops).

    Besides the OIP routes it mounts the extra routes of ``service.extra_routes`` (e.g. ``/v2/feedback``).
    """
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
        key = request.headers.get("x-request-key")
        body = await read_body(request, limit)
        status, head, out = await run_infer(service, p["model"], p.get("version"), body, header, key)
        response = Response(out, status_code=status)
        for line in head.decode("latin-1").split("\r\n"):
            if line:
                k, _, v = line.partition(": ")
                response.headers[k] = v
        return response

    async def repo_index(request: Request) -> Response:
        return _json(await service.index())

    async def repo_load(request: Request) -> Response:
        await service.load(request.path_params["model"])
        return Response(b"", status_code=200)

    async def repo_unload(request: Request) -> Response:
        await service.unload(request.path_params["model"])
        return Response(b"", status_code=200)

    async def metrics(request: Request) -> Response:
        body = await service.metrics.collect()
        if service.extra_metrics is not None:
            try:  # the loop's watch (online metric, drift): a database read, so off the event loop
                body += (await asyncio.to_thread(service.extra_metrics)).encode()
            except Exception:
                log.warning("extra /metrics text failed; serving the server's own metrics", exc_info=True)
        return Response(body, media_type=CONTENT_TYPE)

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
        *service.extra_routes,
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, ModelfabError: http_error})


async def run_infer(
    service: InferenceService,
    model: str,
    version: str | None,
    body: bytes,
    header_length: str | None,
    request_key: str | None,
) -> Reply:
    """Answer one REST infer request: status, header lines and body. Never raises."""
    try:
        if header_length is not None and not header_length.isdigit():
            raise InvalidInputError(f"Inference-Header-Content-Length {header_length[:20]!r} is not a number")
        hlen = int(header_length) if header_length is not None else None

        async def decode() -> InferRequest:
            return decode_request(body, hlen)

        resp, req = await service.infer(model, parse_ref(version), decode, request_key=request_key)
        out, json_len = encode_response(resp, req.outputs, req.binary_outputs)
    except Exception as exc:
        return error_reply(exc)
    pid = resp.prediction_id.encode()
    if json_len is None:
        return 200, b"content-type: application/json\r\nx-prediction-id: " + pid + b"\r\n", out
    head = b"content-type: application/octet-stream\r\nx-prediction-id: %s\r\n" % pid
    return 200, head + b"inference-header-content-length: %d\r\n" % json_len, out


def fast_infer(service: InferenceService) -> Callable[[str, str | None, RawRequest], Awaitable[Reply]]:
    """The infer handler of :class:`~modelfab.serve.transport.http1.HttpFront`: no ASGI on the hot path."""

    async def infer(model: str, version: str | None, req: RawRequest) -> Reply:
        header = req.header(b"inference-header-content-length")
        key = req.header(b"x-request-key")
        return await run_infer(
            service,
            model,
            version,
            req.body,
            header.decode("latin-1") if header is not None else None,
            key.decode("latin-1") if key is not None else None,
        )

    return infer


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelfab")
    except PackageNotFoundError:
        return "0.1.0"
