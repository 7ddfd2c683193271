"""Density benchmark: 10,000 small models registered in a real workspace, random traffic across them.

    .venv/bin/python bench/serve_density.py [--models 10000] [--max-memory 64MiB] [--seconds 15] [--conns 8]

Registers the models once (artifact store + registry, in batches), starts ``modelfab serve`` on that
workspace with ``--max-memory``, sends uniform random OIP v2 JSON traffic from a separate process, and
reports: client latency (nearly every request is a cold load: the budget holds a few percent of the models),
the server's own model load time p99 (from the ``modelfab_model_load_seconds`` histogram), worker RSS growth
across the models against ``--max-memory`` (measured after a 3 s warm-up on 20 models, whose own growth is
reported too: buffers, threads and the registry index are not model memory), and errors. Targets:
cold-load p99 <= 20 ms, memory within the budget, no errors.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import OUT, free_port, load, stop, wait_ready  # noqa: E402


def register(home: Path, count: int) -> list[str]:
    """Register ``count`` distinct small models (once; a marker file remembers)."""
    from serve_models import train_mlp, variants

    from modelfab.settings import Settings
    from modelfab.store import Workspace
    from modelfab.store.records import JobOutcome

    names = [f"dense-{i:05d}" for i in range(count)]
    marker = home / f"registered-{count}"
    if marker.exists():
        return names
    started = time.perf_counter()
    ws = Workspace.open(Settings(home=home))
    blobs = variants(train_mlp((16,)), count)
    outcomes = []
    for name, blob in zip(names, blobs, strict=True):
        art = ws.artifacts.put(blob)
        outcomes.append(
            JobOutcome(
                key=name,
                partition=None,
                model=name,
                status="passed",
                artifact_digest=art.digest,
                artifact_size=len(blob),
                promote=True,
            )
        )
    for i in range(0, count, 500):
        ws.registry.record_outcomes(None, outcomes[i : i + 500])
    ws.close()
    marker.touch()
    print(f"registered {count} models in {time.perf_counter() - started:.1f}s", flush=True)
    return names


def scrape(port: int) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text


def histogram_quantile(text: str, name: str, q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` of an unlabelled histogram."""
    buckets = [
        (float("inf") if le == "+Inf" else float(le), float(v))
        for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    ]
    if not buckets or buckets[-1][1] == 0:
        return None
    want = q * buckets[-1][1]
    return next(le for le, n in buckets if n >= want)


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def main() -> None:
    from modelfab.units import parse_bytes

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--max-memory", default="64MiB")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    home = OUT / "density_home"
    names = register(home, args.models)
    port = free_port()
    script = (
        "from modelfab.settings import Settings\nfrom modelfab.serve import run_server\n"
        f"run_server(Settings(home={str(home)!r}), port={port}, grpc_port=None, workers={args.workers}, "
        f"max_memory_bytes={args.max_memory!r}, log_level='WARNING', router_factory=None, "
        "extra_routes=None)\n"
    )
    row = [0.5] * 64
    body = OUT / "density_body.json"
    body.write_bytes(
        json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}]}
        ).encode()
    )
    paths = [f"/v2/models/{n}/infer" for n in names]
    with open(OUT / "density_server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], start_new_session=True, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        wait_ready(port, paths[0], body.read_bytes(), proc)
        status = json.loads((home / "run" / "serve.json").read_text())
        pids = [int(p) for p in status["workers"].values()]
        idle = rss_bytes(pids)
        # What the server grows by under traffic whatever the models (buffers, threads, the registry
        # index, first runs): a short warm-up on a few models, so the growth after it is the models'.
        load(port, paths[:20], body, args.conns, 3.0)
        baseline = rss_bytes(pids)
        result = load(port, paths, body, args.conns, args.seconds)
        after = rss_bytes(pids)
        text = scrape(port)
    finally:
        stop(proc)
    budget = parse_bytes(args.max_memory)
    resident = sum(
        float(v) for v in re.findall(r"^modelfab_model_resident_bytes\{[^}]*\} (\S+)$", text, re.M)
    )
    load_p50 = histogram_quantile(text, "modelfab_model_load_seconds", 0.5)
    load_p99 = histogram_quantile(text, "modelfab_model_load_seconds", 0.99)
    loads = sum(float(v) for v in re.findall(r"^modelfab_model_loads_total\{[^}]*\} (\S+)$", text, re.M))
    print(f"\n== density: {args.models} models, --max-memory {args.max_memory}, {args.conns} connections ==")
    print(
        f"  requests {result['requests']}  errors {result['errors']}  {result['rps']:.0f} req/s  "
        f"client p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
    )
    print(
        f"  model loads {loads:.0f} ({loads / max(1, result['requests']):.0%} of requests)  "
        f"server load time p50 <= {1000 * (load_p50 or 0):g} ms, p99 <= {1000 * (load_p99 or 0):g} ms "
        "(histogram bucket bounds)"
    )
    print(
        f"  accounted resident model bytes {resident / 2**20:.1f} MiB of {budget / 2**20:.1f} MiB; "
        f"worker RSS grew {(after - baseline) / 2**20:.1f} MiB under traffic across the models "
        f"(from {baseline / 2**20:.0f} MiB after a warm-up on 20 models, which grew it "
        f"{(baseline - idle) / 2**20:.1f} MiB from idle)"
    )
    (OUT / "density.json").write_text(
        json.dumps(
            {
                **result,
                "loads": loads,
                "load_p99_s_bucket": load_p99,
                "resident_bytes": resident,
                "budget": budget,
                "rss_growth": after - baseline,
                "rss_warmup_growth": baseline - idle,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
