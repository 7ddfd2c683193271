"""The HTTP/1 front's limits against hostile clients on raw sockets, while a well-behaved client is served."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import orjson
import pytest
from serve_helpers import MakeServer, ServerThread
from wire import Wire, request

from modelfab.serve.options import ServeOptions

INFER = "/v2/models/digits/infer"
BODY = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]})


def _served(server: ServerThread) -> None:
    r = httpx.post(f"http://{server.url}{INFER}", content=BODY)
    assert r.status_code == 200, r.text


def _error(body: bytes) -> str:
    doc = orjson.loads(body)
    assert set(doc) == {"error"}
    message: str = doc["error"]
    return message


@pytest.fixture
def small(make_server: MakeServer) -> ServerThread:
    return make_server(
        ServeOptions(max_url_bytes=1024, max_header_bytes=4096, max_headers=20, max_body_bytes=64_000),
        grpc=False,
    )


@pytest.mark.parametrize(
    ("head", "piece", "status", "fragment"),
    [
        (request("GET", "/v2/health/live?" + "a" * 2000), 1 << 20, 414, "URL is over the 1024 byte limit"),
        (request("GET", "/v2", headers={f"x-h{i}": "1" for i in range(21)}), 1 << 20, 431, "20 headers"),
        (request("GET", "/v2", headers={"x-big": "b" * 5000}), 1 << 20, 431, "4096 bytes"),
        # one header far over the limit, arriving in pieces: refused before the parser gathers all of it
        (request("GET", "/v2", headers={"x-big": "b" * 10_000_000}), 8192, 431, "4096 bytes"),
    ],
    ids=["long-url", "many-headers", "big-header", "endless-header"],
)
def test_oversized_heads_are_refused(
    small: ServerThread, head: bytes, piece: int, status: int, fragment: str
) -> None:
    with Wire(small.url) as w:
        sent = w.trickle(head, piece, 0.001)
        code, headers, body = w.response()
        assert code == status and headers["connection"] == "close"
        assert fragment in _error(body)
        assert w.closed_by_server()
    assert sent < len(head) or len(head) < 1 << 20
    _served(small)


def test_connections_beyond_the_limit_get_503_and_the_others_keep_being_served(
    make_server: MakeServer,
) -> None:
    server = make_server(ServeOptions(max_connections=2), grpc=False)
    with Wire(server.url) as a, Wire(server.url) as b:
        for w in (a, b):
            w.send(request("GET", "/v2/health/live"))
            assert w.response()[0] == 200
        with Wire(server.url) as c:
            code, headers, body = c.response()
            assert code == 503 and headers["retry-after"] == "1"
            assert "2 connections open" in _error(body)
            assert c.closed_by_server()
        for w in (a, b):
            w.send(request("POST", INFER, BODY))
            assert w.response()[0] == 200
    # with both gone, new connections are served again
    for _ in range(20):
        try:
            _served(server)
            break
        except (AssertionError, httpx.HTTPError):
            threading.Event().wait(0.05)
    else:
        pytest.fail("a new connection was not served after the others closed")


def test_idle_keep_alive_connection_is_closed(make_server: MakeServer) -> None:
    server = make_server(ServeOptions(keepalive_timeout_s=0.3), grpc=False)
    with Wire(server.url) as w:
        w.send(request("GET", "/v2/health/live"))
        assert w.response()[0] == 200
        assert w.closed_by_server()  # nothing sent after the answer: closed well within the socket timeout


def test_slow_request_is_dropped_while_others_are_served(make_server: MakeServer) -> None:
    server = make_server(ServeOptions(read_timeout_s=0.5), grpc=False)
    head = request("GET", "/v2/health/live", headers={f"x-slow-{i}": "x" * 10 for i in range(20)})
    outcome: dict[str, int] = {}

    def slowloris() -> None:
        with Wire(server.url) as w:
            outcome["sent"] = w.trickle(head, 1, 0.02)  # one byte at a time: ~8 s for the whole head
            outcome["status"] = w.response()[0]
            outcome["closed"] = int(w.closed_by_server())

    slow = threading.Thread(target=slowloris)
    slow.start()
    served = 0
    with httpx.Client(base_url=f"http://{server.url}") as client:
        while slow.is_alive():
            assert client.post(INFER, content=BODY).status_code == 200
            served += 1
    slow.join()
    assert outcome["status"] == 408 and outcome["closed"]
    assert outcome["sent"] < len(head)
    assert served > 0


def test_expect_continue_within_the_limit(small: ServerThread) -> None:
    with Wire(small.url) as w:
        w.send(request("POST", INFER, BODY, headers={"expect": "100-continue"})[: -len(BODY)])
        assert w.response()[0] == 100  # before any of the body is sent
        w.send(BODY)
        code, _, body = w.response()
        assert code == 200, body
        w.send(request("GET", "/v2/health/live"))  # the connection goes on
        assert w.response()[0] == 200


def test_expect_continue_over_the_limit_is_refused_without_the_body(small: ServerThread) -> None:
    with Wire(small.url) as w:
        w.send(
            b"POST " + INFER.encode() + b" HTTP/1.1\r\nhost: test\r\ncontent-length: 10000000\r\n"
            b"expect: 100-continue\r\n\r\n"
        )
        code, headers, body = w.response()
        assert code == 413 and headers["connection"] == "close"
        assert "64000 byte limit" in _error(body)
        assert w.closed_by_server()
    _served(small)


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ({"read_timeout_s": 0.0}, "--read-timeout"),
        ({"keepalive_timeout_s": -1.0}, "--keepalive-timeout"),
        ({"max_connections": 0}, "--max-connections"),
    ],
)
def test_run_server_refuses_limits_that_would_refuse_everyone(option: dict[str, Any], needle: str) -> None:
    from modelfab.errors import ConfigError
    from modelfab.serve import run_server

    with pytest.raises(ConfigError, match=needle):
        run_server(object(), workers=1, **option)
