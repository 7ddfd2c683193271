"""Peer: LitServe serving one ONNX model with its own batching (run with the peers venv)."""

from __future__ import annotations

import sys

import litserve as ls
import numpy as np
import onnxruntime as ort


class OnnxAPI(ls.LitAPI):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def setup(self, device: str) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, opts)
        self.names = [o.name for o in self.session.get_outputs()]

    def decode_request(self, request: dict) -> np.ndarray:
        i = request["inputs"][0]
        return np.asarray(i["data"], dtype=np.float32).reshape(i["shape"])

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(inputs)

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.names, {"input": x})

    def unbatch(self, outputs: list[np.ndarray]) -> list[list[np.ndarray]]:
        return [[o[i : i + 1] for o in outputs] for i in range(len(outputs[0]))]

    def encode_response(self, outputs: list[np.ndarray]) -> dict:
        return {
            "outputs": [
                {"name": n, "shape": list(o.shape), "data": o.ravel().tolist()}
                for n, o in zip(self.names, outputs, strict=True)
            ]
        }


if __name__ == "__main__":
    path, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    server = ls.LitServer(
        OnnxAPI(path),
        max_batch_size=64,
        batch_timeout=0.002,
        accelerator="cpu",
        api_path=f"/v2/models/{name}/infer",
    )
    server.run(port=port, host="127.0.0.1", log_level="warning", generate_client_file=False)
