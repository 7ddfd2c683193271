"""Helpers for the serve tests: small real ONNX models, an in-memory registry, a server thread."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelfab.errors import IntegrityError, NotFoundError
from modelfab.serve.service import InferenceService
from modelfab.serve.workers.worker import Worker

ALL_TYPES = {
    "BOOL": 9,
    "UINT8": 2,
    "UINT16": 4,
    "UINT32": 12,
    "UINT64": 13,
    "INT8": 3,
    "INT16": 5,
    "INT32": 6,
    "INT64": 7,
    "FP16": 10,
    "FP32": 1,
    "FP64": 11,
    "BYTES": 8,
}


@dataclass(frozen=True)
class FakeVersion:
    """Satisfies the registry's ModelVersion contract for what the server reads."""

    name: str
    version: int
    artifact_digest: str
    artifact_size: int
    aliases: list[str] = field(default_factory=list)
    serving: dict[str, Any] = field(default_factory=dict)
    partition: str | None = None
    recipe: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    signature: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class FakeSource:
    """An in-memory registry and artifact store that checks digests like the real one."""

    def __init__(self) -> None:
        self.versions: dict[str, dict[int, FakeVersion]] = {}
        self.blobs: dict[str, bytes] = {}
        self.fetches = 0

    def add(
        self,
        name: str,
        onnx: bytes,
        *,
        aliases: tuple[str, ...] = ("champion",),
        serving: dict[str, Any] | None = None,
        corrupt: bool = False,
    ) -> FakeVersion:
        digest = hashlib.sha256(onnx).hexdigest()
        self.blobs[digest] = onnx[:-1] + bytes([onnx[-1] ^ 1]) if corrupt else onnx
        versions = self.versions.setdefault(name, {})
        number = max(versions, default=0) + 1
        for other in versions.values():  # an alias points at one version
            other.aliases[:] = [a for a in other.aliases if a not in aliases]
        v = FakeVersion(name, number, digest, len(onnx), list(aliases), dict(serving or {}))
        versions[number] = v
        return v

    def resolve(self, name: str, ref: str | int | None) -> FakeVersion:
        versions = self.versions.get(name)
        if not versions:
            raise NotFoundError(f"no model named {name!r}")
        if isinstance(ref, int):
            if ref not in versions:
                raise NotFoundError(f"model {name!r} has no version {ref}")
            return versions[ref]
        alias = ref or "champion"
        for v in versions.values():
            if alias in v.aliases:
                return v
        raise NotFoundError(f"model {name!r} has no alias {alias!r}")

    def fetch(self, digest: str) -> bytes:
        self.fetches += 1
        data = self.blobs[digest]
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"artifact {digest[:12]} does not match its sha256")
        return data

    def index(self) -> list[FakeVersion]:
        return [max(vs.values(), key=lambda v: v.version) for vs in self.versions.values()]


# -- models -----------------------------------------------------------------------------------------------
def identity_model(inputs: dict[str, tuple[int, list[int | None]]]) -> bytes:
    """One Identity per input: ``{name: (onnx elem type, shape)}``; outputs are ``out_<name>``."""
    import onnx
    from onnx import helper

    nodes, ins, outs = [], [], []
    for name, (elem, shape) in inputs.items():
        ins.append(helper.make_tensor_value_info(name, elem, shape))
        outs.append(helper.make_tensor_value_info(f"out_{name}", elem, shape))
        nodes.append(helper.make_node("Identity", [name], [f"out_{name}"]))
    graph = helper.make_graph(nodes, "identity", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def doubler_model(shape: list[int | None]) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def digits_mlp(hidden: tuple[int, ...] = (32,), seed: int = 0) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        # A few epochs are enough for a serving test; convergence is beside the point.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=30, random_state=seed).fit(x[:500], y[:500])
    onx = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    return onx.SerializeToString()


def tabular_pipeline() -> bytes:
    """A factory-shaped model: one input per column, a string categorical, label and probabilities."""
    import pandas as pd
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "age": rng.uniform(18, 80, 200).astype(np.float32),
            "city": rng.choice(["oslo", "lima", "pune"], 200),
        }
    )
    y = (df["age"] > 45).astype(int) ^ (df["city"] == "lima").astype(int)
    pipe = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), ["age"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression()),
        ]
    ).fit(df, y)
    onx = to_onnx(
        pipe,
        initial_types=[("age", FloatTensorType([None, 1])), ("city", StringTensorType([None, 1]))],
        options={id(pipe.steps[-1][1]): {"zipmap": False}},
        target_opset=17,
    )
    return onx.SerializeToString()


class ServerThread:
    """A real worker (uvicorn + grpc.aio) on loopback, in a thread with its own event loop."""

    def __init__(self, service: InferenceService, grpc: bool = True) -> None:
        self.service = service
        self.worker = Worker(service, "127.0.0.1", 0, 0 if grpc else None)
        self._thread = threading.Thread(target=lambda: asyncio.run(self.worker.serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.worker.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.worker.grpc_port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self.worker.started.wait(30):
            raise RuntimeError("server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self._thread.join(30)


MakeServer = Callable[..., ServerThread]


def dump_source(source: FakeSource, folder: Path) -> None:
    """Write a fake registry to ``folder`` for worker processes (read back by :func:`file_source`)."""
    folder.mkdir(parents=True, exist_ok=True)
    index = [
        {
            "name": v.name,
            "version": v.version,
            "digest": v.artifact_digest,
            "size": v.artifact_size,
            "aliases": v.aliases,
            "serving": v.serving,
        }
        for vs in source.versions.values()
        for v in vs.values()
    ]
    (folder / "index.json").write_text(json.dumps(index))
    for digest, blob in source.blobs.items():
        (folder / digest).write_bytes(blob)


def file_source(settings: Any) -> FakeSource:
    """A source factory for ``run_server(source_factory="serve_helpers:file_source")``."""
    folder = Path(settings.home) / "fake_registry"
    source = FakeSource()
    for row in json.loads((folder / "index.json").read_text()):
        v = FakeVersion(
            row["name"], row["version"], row["digest"], row["size"], row["aliases"], row["serving"]
        )
        source.versions.setdefault(v.name, {})[v.version] = v
        source.blobs[v.artifact_digest] = (folder / v.artifact_digest).read_bytes()
    return source


ROOT = Path(__file__).resolve().parents[2]  # the repository


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (OSError, ValueError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_server(source: FakeSource, home: Path, port: int, workers: int = 2) -> subprocess.Popen[bytes]:
    """``run_server`` in a process of its own, serving ``source`` (dumped under ``home``) on ``port``."""
    dump_source(source, home / "fake_registry")
    script = (
        "from modelfab.settings import Settings\n"
        "from modelfab.serve import run_server\n"
        f"run_server(Settings(), port={port}, grpc_port=None, workers={workers}, max_memory_bytes='256MiB',"
        " source_factory='serve_helpers:file_source', log_level='WARNING')\n"
    )
    env = {
        **os.environ,
        "MODELFAB_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests" / "serve")]),
    }
    return subprocess.Popen([sys.executable, "-c", script], env=env, cwd=home)
