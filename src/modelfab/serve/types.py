"""Transport-neutral inference request and response values shared by REST and gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["InferRequest", "InferResponse", "RequestedOutput", "Route", "Router", "TensorSpec"]

Array = np.ndarray[Any, Any]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output: OIP datatype and shape, -1 for a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(slots=True)
class InferRequest:
    """A decoded request: named numpy inputs in the order the client sent them."""

    inputs: dict[str, Array]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_outputs: bool = False


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, Array]
    prediction_id: str
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


class Route(Protocol):
    """Which version answers a request (``serve``) and which one also scores it silently (``shadow``)."""

    @property
    def serve(self) -> int | str: ...
    @property
    def shadow(self) -> int | str | None: ...


class Router(Protocol):
    """Deployment routing (canary, shadow, sticky keys); :func:`modelfab.traffic.routing.make_router`."""

    def route(self, model: str, request_key: str | None) -> Route:
        """Synchronous and cheap: called once per infer request that names no version (or ``champion``)."""
        ...
