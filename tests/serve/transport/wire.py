"""A raw HTTP/1.1 client on a socket, for clients no library would be: slow, pipelining, not reading."""

from __future__ import annotations

import select
import socket
import time


class Wire:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        host, _, port = url.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def trickle(self, data: bytes, piece: int, pause: float) -> int:
        """Send ``data`` ``piece`` bytes at a time, ``pause`` seconds apart, until the server answers or
        closes; returns how many bytes were sent."""
        sent = 0
        while sent < len(data):
            try:
                self.sock.sendall(data[sent : sent + piece])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += piece
            readable, _, _ = select.select([self.sock], [], [], pause)
            if readable:
                break
        return min(sent, len(data))

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names) and body."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        while len(self.buf) < size:
            self._more()
        body, self.buf = self.buf[:size], self.buf[size:]
        return status, headers, body

    def closed_by_server(self) -> bool:
        """Whether the server closed the connection (waits up to the socket timeout for it to)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buf += chunk


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: test"]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False
