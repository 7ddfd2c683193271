"""The elastic inference server: every registered model behind Open Inference Protocol v2.

``service.py`` is the request path (resolve -> acquire -> run); ``transport/`` speaks the protocols,
``models/`` loads, keeps and batches models, ``workers/`` runs processes, ``metrics.py`` counts.

Heavy modules (onnxruntime, uvicorn, grpc) load only when a server is built or run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfab._lazy import lazy_exports

if TYPE_CHECKING:
    from modelfab.serve.options import ServeOptions
    from modelfab.serve.server import run_server
    from modelfab.traffic.predlog import read_predictions

__all__ = ["ServeOptions", "read_predictions", "run_server"]

_WHERE = {
    "ServeOptions": "modelfab.serve.options",
    "read_predictions": "modelfab.traffic.predlog",
    "run_server": "modelfab.serve.server",
}


__getattr__ = lazy_exports("modelfab.serve", _WHERE)
