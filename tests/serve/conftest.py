"""Serve test fixtures: small real ONNX models, an in-memory registry, and real servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import (
    ALL_TYPES,
    FakeSource,
    MakeServer,
    ServerThread,
    digits_mlp,
    doubler_model,
    identity_model,
    tabular_pipeline,
)

from modelfab.serve.options import ServeOptions
from modelfab.serve.service import InferenceService


@pytest.fixture(scope="session")
def onnx_models() -> dict[str, bytes]:
    return {
        "digits": digits_mlp(),
        "digits2": digits_mlp((16,), seed=1),
        "types": identity_model({f"in_{t}": (e, [None, 2]) for t, e in ALL_TYPES.items()}),
        "fixed": doubler_model([1, 4]),
        "double": doubler_model([None, 4]),
        "tabular": tabular_pipeline(),
        "broken": doubler_model([None, 5]),
    }


@pytest.fixture
def source(onnx_models: dict[str, bytes]) -> FakeSource:
    s = FakeSource()
    s.add("digits", onnx_models["digits"])
    s.add("digits", onnx_models["digits2"], aliases=("challenger",))
    for name in ("types", "fixed", "double", "tabular"):
        s.add(name, onnx_models[name])
    s.add("broken", onnx_models["broken"], corrupt=True)
    return s


@pytest.fixture
def make_server(source: FakeSource, tmp_path: Path) -> Iterator[MakeServer]:
    running: list[ServerThread] = []

    def make(options: ServeOptions | None = None, grpc: bool = True, src: Any = None) -> ServerThread:
        service = InferenceService(src or source, options or ServeOptions(), home=tmp_path)
        server = ServerThread(service, grpc).__enter__()
        running.append(server)
        return server

    yield make
    for s in running:
        s.__exit__()


@pytest.fixture
def server(make_server: MakeServer) -> ServerThread:
    return make_server()
