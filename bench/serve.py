"""Serving benchmark: modelfab against peers, same models, same load, same machine. Run by hand.

    .venv/bin/python bench/serve.py [--seconds 10] [--conns 32] [--workers 1,2] [--only tiny,heavy,many]

Peers: a minimal Starlette + uvicorn + onnxruntime endpoint (always), LitServe, Ray Serve (``@serve.batch``)
and, for many models, Ray Serve ``@serve.multiplexed(max_num_models_per_replica=200)``, when a peers
virtualenv at bench/out/peers has them (``python -m venv bench/out/peers && bench/out/peers/bin/pip install
litserve 'ray[serve]' onnxruntime numpy``); a missing peer is skipped with the reason. ``modelfab xN`` is
compared with the Starlette peer run as N processes sharing the port (and, for many models, the same total of
200 resident sessions). The 1,000 many-models artifacts are distinct (see ``serve_models.variants``). Load
comes from a separate process, OIP v2 JSON bodies over keep-alive HTTP/1.1: wrk with bench/wrk_oip.lua where
wrk is installed (``apt-get install wrk``; one thread, so the server keeps a core), else bench/serve_load.py
(asyncio, which needs most of a core itself and caps what a fast server can show).
The density benchmark (10,000 models in a real workspace) is bench/serve_density.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out" / "serve"
PEERS_PY = HERE / "out" / "peers" / "bin" / "python"
RAY_MANY = HERE / "serve_ray_many.py"
sys.path.insert(0, str(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(
    port: int, path: str, body: bytes, proc: subprocess.Popen[bytes], timeout: float = 120
) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.post(
                f"http://127.0.0.1:{port}{path}",
                content=body,
                headers={"content-type": "application/json"},
                timeout=5,
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


LOADER = "wrk" if shutil.which("wrk") else "python"


def load(port: int, paths: list[str], body_file: Path, conns: int, seconds: float) -> dict[str, float]:
    """Load from a separate process: wrk (C, one thread: it leaves the other core to the server) where
    it is installed, else bench/serve_load.py (asyncio). Both print the same JSON line."""
    if LOADER == "wrk":
        lines = OUT / "paths.txt"
        lines.write_text("\n".join(paths) + "\n")
        # A short warm-up first, like serve_load.py's (connections, first loads), then the measured run.
        for secs in (min(2.0, seconds), seconds):
            out = subprocess.run(
                [
                    "wrk",
                    "-t1",
                    f"-c{conns}",
                    f"-d{max(1, round(secs))}s",
                    "--timeout",
                    "10s",
                    "-s",
                    str(HERE / "wrk_oip.lua"),
                    f"http://127.0.0.1:{port}",
                    "--",
                    str(lines),
                    str(body_file),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    paths_file = OUT / "paths.json"
    paths_file.write_text(json.dumps(paths))
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "serve_load.py"),
            "--port",
            str(port),
            "--paths",
            f"@{paths_file}",
            "--body",
            str(body_file),
            "--conns",
            str(conns),
            "--seconds",
            str(seconds),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    loaded: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def modelfab_cmd(port: int, home: Path, workers: int, memory: str) -> tuple[list[str], dict[str, str]]:
    script = (
        "from modelfab.settings import Settings\nfrom modelfab.serve import run_server\n"
        f"run_server(Settings(home={str(home)!r}), port={port}, grpc_port=None, workers={workers}, "
        f"max_memory_bytes={memory!r}, source_factory='serve_source:folder_source', log_level='WARNING', "
        "router_factory=None, extra_routes=None)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(HERE)])}
    return [sys.executable, "-c", script], env


def starlette_cmd(port: int, registry: Path, *, procs: int = 1, lru: int = 0) -> list[str]:
    script = str(HERE / "serve_starlette.py")
    return [
        sys.executable,
        script,
        "--port",
        str(port),
        "--registry",
        str(registry),
        "--procs",
        str(procs),
        "--lru",
        str(lru),
    ]


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=open(OUT / "server.log", "ab")
    )


def budget_for(blobs: list[bytes], resident: int) -> int:
    """The ``--max-memory`` at which modelfab holds about ``resident`` of ``blobs`` (all small, one
    architecture) after serving each of them: per-model bookkeeping for all, the shared graph, and the
    weights of ``resident`` models, as the server charges them."""
    from modelfab.serve.metrics import MODEL_BOOKKEEPING_BYTES
    from modelfab.serve.models.runtime import session_overhead_bytes
    from modelfab.serve.models.shared import MODEL_OVERHEAD_BYTES, split_weights

    split = split_weights(blobs[0])
    assert split is not None, "the many-models MLPs share a graph"
    per_model = sum(a.nbytes for a in split.weights.values()) + MODEL_OVERHEAD_BYTES
    shared = len(split.graph) + session_overhead_bytes
    return len(blobs) * MODEL_BOOKKEEPING_BYTES + shared + resident * per_model


def resident_models(port: int) -> int:
    """Models loaded in the server now, from its /metrics (one resident-bytes series per loaded model)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(1 for line in text.splitlines() if line.startswith("modelfab_model_resident_bytes{"))


def run_peer(
    name: str,
    launch: Callable[[int], subprocess.Popen[bytes]],
    paths: list[str],
    body: Path,
    args: argparse.Namespace,
    *,
    resident: bool = False,
) -> dict[str, float] | str:
    port = free_port()
    try:
        proc = launch(port)
    except (OSError, RuntimeError) as exc:
        return f"skipped: {exc}"
    try:
        wait_ready(port, paths[0], body.read_bytes(), proc)
        result = load(port, paths, body, args.conns, args.seconds)
        if resident:
            result["resident"] = resident_models(port)
        return result
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        return f"skipped: {exc}"
    finally:
        stop(proc)


def main() -> None:
    from serve_models import HEAVY, TINY, train_mlp, variants, write_registry

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--only", default="tiny,heavy,many")
    ap.add_argument("--peers", default="litserve,ray", help="optional peers to run (comma list, or 'none')")
    ap.add_argument("--loader", choices=["wrk", "python"], default=None, help="load generator")
    args = ap.parse_args()
    global LOADER
    LOADER = args.loader or LOADER
    OUT.mkdir(parents=True, exist_ok=True)
    home = OUT / "home"
    registry = home / "bench_registry"
    print("training models on digits ...", flush=True)
    tiny, heavy = train_mlp(TINY), train_mlp(HEAVY)
    many = {f"small-{i:04d}": blob for i, blob in enumerate(variants(tiny, 1000))}
    write_registry(registry, {"tiny": tiny, "heavy": heavy, **many})
    (OUT / "tiny.onnx").write_bytes(tiny)
    (OUT / "heavy.onnx").write_bytes(heavy)
    row = [round(random.Random(0).random(), 4) for _ in range(64)]
    body = OUT / "body.json"
    body.write_bytes(
        json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}]}
        ).encode()
    )
    has_peers = PEERS_PY.exists()
    results: dict[str, dict[str, dict[str, float] | str]] = {}
    for scenario in args.only.split(","):
        res: dict[str, dict[str, float] | str] = {}
        if scenario in ("tiny", "heavy"):
            paths = [f"/v2/models/{scenario}/infer"]
            onnx_path = str(OUT / f"{scenario}.onnx")
            for w in [int(x) for x in args.workers.split(",")]:
                res[f"modelfab x{w}"] = run_peer(
                    "modelfab", lambda p, w=w: start(*modelfab_cmd(p, home, w, "1GiB")), paths, body, args
                )
            for w in [int(x) for x in args.workers.split(",")]:  # same process count as modelfab xN
                res[f"starlette x{w}"] = run_peer(
                    "starlette", lambda p, w=w: start(starlette_cmd(p, registry, procs=w)), paths, body, args
                )
            for peer, script in (("litserve", "serve_litserve.py"), ("ray serve", "serve_ray.py")):
                if peer.split()[0] not in args.peers.split(","):
                    continue
                if not has_peers:
                    res[peer] = f"skipped: no peers venv at {PEERS_PY.parent.parent}"
                    continue
                res[peer] = run_peer(
                    peer,
                    lambda p, s=script, o=onnx_path, n=scenario: start(
                        [str(PEERS_PY), str(HERE / s), o, str(p), n]
                    ),
                    paths,
                    body,
                    args,
                )
        elif scenario == "many":
            paths = [f"/v2/models/{n}/infer" for n in many]
            # The setup: a budget that holds about 200 of the models, as modelfab counts them
            # (a model on a shared graph holds its weights, not a session: see serve/models/shared.py).
            # The resident count is read back from /metrics after the run.
            budget = str(budget_for(list(many.values()), 200))
            # And the byte budget that holds 200 models of the Starlette peer (a session each): the
            # memory a plain LRU-200 needs, given to modelfab.
            same_bytes = str(200 * (len(tiny) + 256 * 1024))
            for w in [int(x) for x in args.workers.split(",")]:
                for label, b in ((f"modelfab x{w}", budget), (f"modelfab x{w} same bytes", same_bytes)):
                    res[label] = run_peer(
                        "modelfab",
                        lambda p, w=w, b=b: start(*modelfab_cmd(p, home, w, b)),
                        paths,
                        body,
                        args,
                        resident=True,
                    )
            # Same process count and the same total of resident models (200) as each modelfab run.
            for w in [int(x) for x in args.workers.split(",")]:
                res[f"starlette lru200 x{w}"] = run_peer(
                    "starlette",
                    lambda p, w=w: start(starlette_cmd(p, registry, procs=w, lru=200 // w)),
                    paths,
                    body,
                    args,
                )
            if "ray" in args.peers.split(","):
                if not has_peers:
                    res["ray serve multiplexed"] = f"skipped: no peers venv at {PEERS_PY.parent.parent}"
                else:
                    res["ray serve multiplexed"] = run_peer(
                        "ray",
                        lambda p: start(
                            [str(PEERS_PY), str(HERE / "serve_ray_many.py"), str(registry), str(p)]
                        ),
                        paths,
                        body,
                        args,
                    )
        results[scenario] = res
        print(f"\n== {scenario} ({args.conns} connections, {args.seconds}s) ==")
        for peer, r in res.items():
            if isinstance(r, str):
                print(f"  {peer:26s} {r}")
                continue
            # like with like: modelfab xN against the peer run with N processes
            n = peer.split()[1][1:] if peer.startswith("modelfab x") else "1"
            base = res.get(f"starlette x{n}") or res.get(f"starlette lru200 x{n}")
            ratio = (
                f"{r['rps'] / base['rps']:.2f}x starlette" if isinstance(base, dict) and base["rps"] else ""
            )
            ray = res.get("ray serve multiplexed") or res.get("ray serve")
            if isinstance(ray, dict) and ray["rps"] and peer.startswith("modelfab"):
                ratio += f", {r['rps'] / ray['rps']:.2f}x ray"
            if "resident" in r:
                ratio += f" ({int(r['resident'])} models resident)"
            print(
                f"  {peer:26s} {r['rps']:9.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                f"  errors {r['errors']}  {ratio}"
            )
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults in {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
