"""Peer: Ray Serve with ``@serve.multiplexed(max_num_models_per_replica=200)`` serving a registry folder of
many ONNX models, one replica (run with the peers venv: ``serve_ray_many.py REGISTRY PORT``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1, max_ongoing_requests=64)
class Many:
    def __init__(self, registry: str) -> None:
        self.folder = Path(registry)
        rows = json.loads((self.folder / "index.json").read_text())
        self.index = {r["name"]: r["digest"] for r in rows}

    @serve.multiplexed(max_num_models_per_replica=200)
    async def get_model(self, model_id: str) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        return ort.InferenceSession((self.folder / self.index[model_id]).read_bytes(), opts)

    async def __call__(self, request: Request) -> dict:
        # /v2/models/{name}/infer: the model id comes from the path, as OIP clients send it
        name = request.url.path.split("/")[3]
        session = await self.get_model(name)
        doc = await request.json()
        i = doc["inputs"][0]
        names = [o.name for o in session.get_outputs()]
        outs = session.run(names, {"input": np.asarray(i["data"], dtype=np.float32).reshape(i["shape"])})
        return {
            "model_name": name,
            "outputs": [{"name": n, "data": o.ravel().tolist()} for n, o in zip(names, outs, strict=True)],
        }


if __name__ == "__main__":
    registry, port = sys.argv[1], int(sys.argv[2])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Many.bind(registry), route_prefix="/v2/models", blocking=False)
    while True:
        time.sleep(3600)
