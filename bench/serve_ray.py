"""Peer: Ray Serve with ``@serve.batch`` serving one ONNX model (run with the peers venv)."""

from __future__ import annotations

import sys
import time

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request


# Room for a full batch: with Ray's default of 5 requests per replica, 32 connections queue at the proxy.
@serve.deployment(max_ongoing_requests=64)
class Onnx:
    def __init__(self, path: str) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts)
        self.names = [o.name for o in self.session.get_outputs()]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def run(self, xs: list[np.ndarray]) -> list[dict]:
        outs = self.session.run(self.names, {"input": np.concatenate(xs)})
        return [
            {
                "outputs": [
                    {"name": n, "data": o[i].ravel().tolist()} for n, o in zip(self.names, outs, strict=True)
                ]
            }
            for i in range(len(xs))
        ]

    async def __call__(self, request: Request) -> dict:
        doc = await request.json()
        i = doc["inputs"][0]
        return await self.run(np.asarray(i["data"], dtype=np.float32).reshape(i["shape"]))


if __name__ == "__main__":
    path, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Onnx.bind(path), route_prefix=f"/v2/models/{name}/infer", blocking=False)
    while True:
        time.sleep(3600)
