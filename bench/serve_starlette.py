"""Peer: a minimal Starlette + uvicorn + onnxruntime OIP endpoint (one process, no batching).

With ``--lru N`` it keeps at most N sessions in a plain LRU dict (the many-models peer).
"""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--registry", type=Path, required=True)
    ap.add_argument("--lru", type=int, default=0)
    args = ap.parse_args()
    index = {r["name"]: r["digest"] for r in json.loads((args.registry / "index.json").read_text())}
    sessions: OrderedDict[str, ort.InferenceSession] = OrderedDict()

    def session(name: str) -> ort.InferenceSession:
        s = sessions.get(name)
        if s is None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            s = ort.InferenceSession((args.registry / index[name]).read_bytes(), opts)
            sessions[name] = s
            if args.lru and len(sessions) > args.lru:
                sessions.popitem(last=False)
        else:
            sessions.move_to_end(name)
        return s

    async def infer(request: Request) -> Response:
        name = request.path_params["model"]
        doc = orjson.loads(await request.body())
        s = session(name)
        feeds = {
            i["name"]: np.asarray(i["data"], dtype=np.float32).reshape(i["shape"]) for i in doc["inputs"]
        }
        names = [o.name for o in s.get_outputs()]
        results = s.run(names, feeds)
        outputs = [
            {
                "name": n,
                "datatype": "FP32" if r.dtype == np.float32 else "INT64",
                "shape": list(r.shape),
                "data": r.ravel(),
            }
            for n, r in zip(names, results, strict=True)
        ]
        body = orjson.dumps({"model_name": name, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body, media_type="application/json")

    app = Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, http="httptools"
    )


if __name__ == "__main__":
    main()
