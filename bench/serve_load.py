"""Load generator: raw keep-alive HTTP/1.1 over asyncio, light enough not to be the bottleneck.

Prints one JSON line: requests, errors, seconds, rps, p50_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time


def build_requests(host: str, port: int, paths: list[str], body: bytes) -> list[bytes]:
    return [
        (
            f"POST {p} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for p in paths
    ]


async def connection(
    host: str,
    port: int,
    reqs: list[bytes],
    deadline: float,
    lat: list[float],
    errors: list[int],
    rng: random.Random,
) -> None:
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors.append(0)
            await asyncio.sleep(0.05)
            continue
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                writer.write(reqs[rng.randrange(len(reqs))])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                chunked = False
                for line in head.split(b"\r\n"):
                    low = line.lower()
                    if low[:15] == b"content-length:":
                        length = int(line[15:])
                    elif low.startswith(b"transfer-encoding:") and b"chunked" in low:
                        chunked = True  # Ray Serve's proxy answers chunked
                if chunked:
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                else:
                    await reader.readexactly(length)
                if status == 200:
                    lat.append(time.perf_counter() - started)
                else:
                    errors.append(status)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors.append(-1)
        finally:
            writer.close()


async def run(
    host: str, port: int, paths: list[str], body: bytes, conns: int, seconds: float, warmup: float
) -> dict[str, float]:
    reqs = build_requests(host, port, paths, body)
    if warmup > 0:
        await asyncio.gather(
            *(
                connection(host, port, reqs, time.monotonic() + warmup, [], [], random.Random(i))
                for i in range(conns)
            )
        )
    lat: list[float] = []
    errors: list[int] = []
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(
        *(connection(host, port, reqs, deadline, lat, errors, random.Random(i)) for i in range(conns))
    )
    elapsed = time.monotonic() - started
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else 0.0

    return {
        "requests": len(lat),
        "errors": len(errors),
        "seconds": round(elapsed, 2),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--paths", required=True, help="JSON list of request paths, picked at random (@FILE: read from FILE)"
    )
    ap.add_argument("--body", required=True, help="file with the JSON body")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    args = ap.parse_args()
    with open(args.body, "rb") as fh:
        body = fh.read()
    if args.paths.startswith("@"):
        with open(args.paths[1:]) as fh:
            paths = json.load(fh)
    else:
        paths = json.loads(args.paths)
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(run("127.0.0.1", args.port, paths, body, args.conns, args.seconds, args.warmup))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
