"""The hostile clients of bench/faults.py, each run as its own process (so its work does not take the GIL from
the well-behaved clients it is measured against). Standard library only; loopback only; every loop is
bounded in count and in time. Prints one JSON line with what it did.

    python bench/faults_attacks.py slowloris --port P --seconds S [--conns N]
    python bench/faults_attacks.py names --port P --seconds S [--count 10000]
    python bench/faults_attacks.py pipeline --port P --seconds S [--total-mib 1024] [--conns 4]
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import string
import time
from typing import Any

HOST = "127.0.0.1"


def _connect(port: int, timeout: float = 2.0) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def slowloris(port: int, seconds: float, conns: int) -> dict[str, Any]:
    """``conns`` connections, each sending one more header byte every second and never finishing."""
    socks: list[socket.socket] = []
    refused = 0
    deadline = time.monotonic() + seconds
    for _ in range(conns):
        if time.monotonic() > deadline:
            break
        try:
            s = _connect(port)
            s.sendall(b"POST /v2/models/churn.site-000/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            s.setblocking(False)
            socks.append(s)
        except OSError:
            refused += 1
    opened = len(socks)
    closed_by_server = 0
    sent = 0
    while socks and time.monotonic() < deadline:
        tick = time.monotonic()
        alive = []
        for s in socks:
            try:
                # A peer that closed or answered (408, 400) shows up as readable.
                r, _, _ = select.select([s], [], [], 0)
                if r and not s.recv(4096):
                    raise ConnectionResetError
                s.send(b"a")
                sent += 1
                alive.append(s)
            except OSError:
                closed_by_server += 1
                s.close()
        socks = alive
        time.sleep(max(0.0, min(1.0 - (time.monotonic() - tick), deadline - time.monotonic())))
    for s in socks:
        s.close()
    return {
        "opened": opened,
        "refused": refused,
        "closed_by_server": closed_by_server,
        "still_open_at_end": len(socks),
        "header_bytes": sent,
    }


class _Reader:
    """Reads HTTP/1.1 responses (Content-Length or chunked) from one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("server closed the connection")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self) -> int:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in lines[1:])}
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                self._take(size + 2)
                if size == 0:
                    break
        else:
            self._take(int(headers.get(b"content-length", b"0")))
        return status


def names(port: int, seconds: float, count: int, conns: int = 4, window: int = 32) -> dict[str, Any]:
    """``count`` infer requests to random model names, pipelined ``window`` at a time on ``conns``
    keep-alive connections (round robin); reconnects when the server closes one."""
    rng = random.Random(9)
    body = json.dumps(
        {"inputs": [{"name": "tenure", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]}
    ).encode()
    statuses: dict[str, int] = {}
    sent = answered = reconnects = 0
    deadline = time.monotonic() + seconds
    socks: list[socket.socket | None] = [None] * conns
    i = 0
    while sent < count and time.monotonic() < deadline:
        slot = i % conns
        i += 1
        try:
            s = socks[slot]
            if s is None:
                s = socks[slot] = _connect(port, timeout=10.0)
            n = min(window, count - sent)
            reqs = []
            for _ in range(n):
                name = "".join(rng.choices(string.ascii_lowercase + string.digits, k=16))
                reqs.append(
                    f"POST /v2/models/m-{name}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            s.sendall(b"".join(reqs))
            sent += n
            reader = _Reader(s)
            for _ in range(n):
                code = str(reader.response())
                statuses[code] = statuses.get(code, 0) + 1
                answered += 1
        except OSError as exc:
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
            reconnects += 1
            if socks[slot] is not None:
                socks[slot].close()  # type: ignore[union-attr]
            socks[slot] = None
    for s in socks:
        if s is not None:
            s.close()
    return {"sent": sent, "answered": answered, "statuses": statuses, "reconnects": reconnects}


def pipeline(port: int, seconds: float, total_mib: int, conns: int, body_kib: int = 1024) -> dict[str, Any]:
    """``total_mib`` MiB of infer requests (``body_kib`` KiB bodies: one valid row, padded with JSON
    whitespace) written back to back on ``conns`` connections in 256 KiB chunks, never reading a reply."""
    one = json.dumps(
        {
            "inputs": [
                {"name": "tenure", "datatype": "FP32", "shape": [1, 1], "data": [12.0]},
                {"name": "monthly_spend", "datatype": "FP32", "shape": [1, 1], "data": [49.5]},
                {"name": "support_calls", "datatype": "FP32", "shape": [1, 1], "data": [3.0]},
                {"name": "plan", "datatype": "BYTES", "shape": [1, 1], "data": ["basic"]},
                {"name": "contract", "datatype": "BYTES", "shape": [1, 1], "data": ["monthly"]},
            ]
        }
    ).encode()
    body = one + b" " * (body_kib * 1024 - len(one))
    request = (
        f"POST /v2/models/churn.site-000/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    view = memoryview(request)
    per_conn = total_mib * 1024 * 1024 // conns
    chunk = 256 * 1024
    socks: dict[socket.socket, int] = {}  # bytes sent on each
    for _ in range(conns):
        s = _connect(port)
        s.setblocking(False)
        socks[s] = 0
    deadline = time.monotonic() + seconds
    sent = 0
    closed_by_server = 0
    while socks and time.monotonic() < deadline:
        _, writable, _ = select.select([], list(socks), [], min(0.5, max(0.0, deadline - time.monotonic())))
        for s in writable:
            at = socks[s] % len(request)
            piece = view[at : at + chunk]
            try:
                n = s.send(piece)
            except OSError:
                closed_by_server += 1
                del socks[s]
                s.close()
                continue
            socks[s] += n
            sent += n
            if socks[s] >= per_conn:
                del socks[s]
                s.close()
    blocked = len(socks)  # connections the server stopped reading from (back-pressure) before the deadline
    for s in socks:
        s.close()
    return {
        "sent_mib": round(sent / 2**20, 1),
        "requests_sent": sent // len(request),
        "closed_by_server": closed_by_server,
        "unfinished_conns": blocked,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("attack", choices=["slowloris", "names", "pipeline"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--conns", type=int, default=0)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--total-mib", type=int, default=1024)
    args = ap.parse_args()
    if args.attack == "slowloris":
        out = slowloris(args.port, args.seconds, args.conns or 500)
    elif args.attack == "names":
        out = names(args.port, args.seconds, args.count, args.conns or 4)
    else:
        out = pipeline(args.port, args.seconds, args.total_mib, args.conns or 4)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
