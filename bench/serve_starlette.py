"""Peer: a minimal Starlette + uvicorn + onnxruntime OIP endpoint (no batching).

With ``--lru N`` it keeps at most N sessions in a plain LRU dict (the many-models peer). With ``--procs N``
it runs N processes sharing the port (SO_REUSEPORT), like modelfab's workers, each with its own LRU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
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
    ap.add_argument("--procs", type=int, default=1)
    args = ap.parse_args()
    children = [mp.Process(target=serve, args=(args,)) for _ in range(args.procs - 1)]
    for c in children:
        c.start()
    serve(args)


def serve(args: argparse.Namespace) -> None:
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
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", args.port))
    # Hand uvicorn the TCP socket itself: its ``fd=`` option treats a descriptor as a UNIX socket, which
    # skips TCP_NODELAY (Nagle then adds ~40 ms per response).
    config = uvicorn.Config(app, log_level="warning", access_log=False, http="httptools")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
