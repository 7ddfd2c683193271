"""The elastic inference server: every registered model behind Open Inference Protocol v2.

Heavy modules (onnxruntime, uvicorn, grpc) load only when a server is built or run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelfab.serve.options import ServeOptions
    from modelfab.serve.predlog import read_predictions
    from modelfab.serve.server import run_server

__all__ = ["ServeOptions", "read_predictions", "run_server", "send_demo_traffic"]

_WHERE = {
    "ServeOptions": "modelfab.serve.options",
    "read_predictions": "modelfab.serve.predlog",
    "run_server": "modelfab.serve.server",
    "send_demo_traffic": "modelfab.serve.demo",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'modelfab.serve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
