"""``inference.GRPCInferenceService`` on grpc.aio, sharing the worker's event loop and service."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from modelfab.errors import ModelfabError
from modelfab.serve.models.source import parse_ref
from modelfab.serve.service import SERVER_EXTENSIONS, InferenceService
from modelfab.serve.transport.codec_grpc import decode_infer_request, encode_infer_response
from modelfab.serve.types import InferRequest

__all__ = ["SERVICE_NAME", "create_grpc_server"]

log = logging.getLogger("modelfab.serve")
SERVICE_NAME = "inference.GRPCInferenceService"


def _status(code: int) -> Any:
    import grpc

    return {
        400: grpc.StatusCode.INVALID_ARGUMENT,
        404: grpc.StatusCode.NOT_FOUND,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        429: grpc.StatusCode.RESOURCE_EXHAUSTED,
        503: grpc.StatusCode.UNAVAILABLE,
    }.get(code, grpc.StatusCode.INTERNAL)


def _guard(fn: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handler(request: Any, context: Any) -> Any:
        try:
            return await fn(request, context)
        except ModelfabError as exc:
            await context.abort(_status(exc.status_code), exc.message)
        except Exception as exc:
            if type(exc).__name__ == "AbortError":  # raised by context.abort itself
                raise
            log.error("unexpected error answering a gRPC request", exc_info=exc)
            await context.abort(_status(500), "internal server error; the server log has the details")

    return handler


def create_grpc_server(service: InferenceService, host: str, port: int) -> tuple[Any, int]:
    """A grpc.aio server bound to ``host:port`` (0 picks a port), not started; returns it and the port."""
    import importlib

    import grpc

    from modelfab.serve.transport.rest import _version

    # Generated code is untyped; reach it through Any rather than scatter ignores.
    pb: Any = importlib.import_module("modelfab.serve.transport.proto.oip_v2_pb2")

    limit = service.options.max_body_bytes

    async def server_live(req: Any, ctx: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(req: Any, ctx: Any) -> Any:
        return pb.ServerReadyResponse(ready=service.ready)

    async def model_ready(req: Any, ctx: Any) -> Any:
        await service.model(req.name, parse_ref(req.version or None))
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(req: Any, ctx: Any) -> Any:
        return pb.ServerMetadataResponse(
            name=service.options.server_name, version=_version(), extensions=SERVER_EXTENSIONS
        )

    async def model_metadata(req: Any, ctx: Any) -> Any:
        meta = await service.metadata(req.name, parse_ref(req.version or None))
        out = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for spec in meta["inputs"]:
            out.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        for spec in meta["outputs"]:
            out.outputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        return out

    async def model_infer(req: Any, ctx: Any) -> Any:
        async def decode() -> InferRequest:
            return decode_infer_request(req)

        resp, decoded = await service.infer(
            req.model_name, parse_ref(req.model_version or None), decode, "grpc"
        )
        await ctx.send_initial_metadata((("x-prediction-id", resp.prediction_id),))
        return encode_infer_response(resp, decoded.outputs, pb)

    def unary(fn: Callable[[Any, Any], Awaitable[Any]], req_cls: Any, resp_cls: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            _guard(fn),
            request_deserializer=req_cls.FromString,
            response_serializer=resp_cls.SerializeToString,
        )

    handlers = {
        "ServerLive": unary(server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": unary(server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": unary(model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": unary(server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": unary(model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": unary(model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
    }
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1),
        ]
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    return server, bound
