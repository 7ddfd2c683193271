"""Demo traffic through tritonclient, for the quickstart: throughput and latency of a running server."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["send_demo_traffic"]

_CATEGORIES = ["a", "b", "c", "oslo", "lima", "pune"]


def _inputs(meta: dict[str, Any], rows: int, rng: np.random.Generator) -> list[Any]:
    import tritonclient.http as httpclient

    from modelfab.serve.transport.datatypes import OIP_TO_NUMPY

    out = []
    for spec in meta["inputs"]:
        shape = [rows if d == -1 and i == 0 else (1 if d == -1 else d) for i, d in enumerate(spec["shape"])]
        datatype = spec["datatype"]
        if datatype == "BYTES":
            data = np.array(rng.choice(_CATEGORIES, size=shape), dtype=object)
        elif datatype == "BOOL":
            data = rng.random(shape) > 0.5
        else:
            data = (rng.random(shape) * 10).astype(OIP_TO_NUMPY[datatype])
        tensor = httpclient.InferInput(spec["name"], shape, datatype)
        tensor.set_data_from_numpy(data, binary_data=False)
        out.append(tensor)
    return out


def send_demo_traffic(
    url: str, model_names: Sequence[str], seconds: float = 5.0, *, concurrency: int = 8, rows: int = 1
) -> dict[str, Any]:
    """Send OIP v2 JSON requests for ``seconds`` from ``concurrency`` threads over random models.

    ``url`` is ``host:port`` (a leading ``http://`` is accepted). Returns requests, errors, seconds,
    throughput_rps, p50_ms, p99_ms and the first few error messages.
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    host = url.removeprefix("http://").rstrip("/")
    if not model_names:
        raise ValueError("send_demo_traffic needs at least one model name")
    probe = httpclient.InferenceServerClient(host)
    try:
        metas = {name: probe.get_model_metadata(name) for name in model_names}
    finally:
        probe.close()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def run(seed: int) -> None:
        rng = np.random.default_rng(seed)
        pick = random.Random(seed)
        client = httpclient.InferenceServerClient(host)
        mine: list[float] = []
        bad: list[str] = []
        try:
            while time.monotonic() < deadline:
                name = pick.choice(list(model_names))
                inputs = _inputs(metas[name], rows, rng)
                started = time.perf_counter()
                try:
                    client.infer(name, inputs)
                    mine.append(time.perf_counter() - started)
                except InferenceServerException as exc:
                    bad.append(str(exc))
        finally:
            client.close()
            with lock:
                latencies.extend(mine)
                errors.extend(bad)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    ms = np.array(latencies) * 1000.0 if latencies else np.array([0.0])
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "error_samples": errors[:5],
    }
