"""The elastic inference server: every registered model behind Open Inference Protocol v2.

Heavy modules (onnxruntime, uvicorn, grpc) load only when a server is built or run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfab._lazy import lazy_exports

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


__getattr__ = lazy_exports("modelfab.serve", _WHERE)
