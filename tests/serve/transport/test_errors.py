"""A table of malformed requests: each gets its status and a message naming what was wrong."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from serve_helpers import MakeServer

from modelfab.serve.options import ServeOptions

ROW = [0.0] * 64


def _inp(
    name: str = "input", datatype: str = "FP32", shape: Any = (1, 64), data: Any = ROW
) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": data}


def _body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


BIN_HEAD = _body(
    {"name": "input", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 8}}
)

CASES: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    # id, method, path, body, headers, status, message fragment
    ("bad-json", "POST", "/v2/models/digits/infer", b"{nope", {}, 400, "not valid JSON"),
    ("not-object", "POST", "/v2/models/digits/infer", b"[1, 2]", {}, 400, "JSON object"),
    ("no-inputs", "POST", "/v2/models/digits/infer", b"{}", {}, 400, "'inputs'"),
    ("empty-inputs", "POST", "/v2/models/digits/infer", b'{"inputs": []}', {}, 400, "non-empty"),
    ("input-not-object", "POST", "/v2/models/digits/infer", b'{"inputs": [3]}', {}, 400, "inputs[0]"),
    ("no-name", "POST", "/v2/models/digits/infer", _body({"datatype": "FP32"}), {}, 400, "'name'"),
    (
        "bad-datatype",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp(datatype="FLOAT")),
        {},
        400,
        "unknown datatype 'FLOAT'",
    ),
    (
        "wrong-datatype",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp(datatype="FP64")),
        {},
        400,
        "input 'input': expected datatype FP32, got FP64",
    ),
    (
        "int-for-float-typed-int",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp(datatype="INT64", data=[0] * 64)),
        {},
        400,
        "expected datatype FP32",
    ),
    (
        "wrong-shape",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp(shape=(1, 63), data=ROW[:63])),
        {},
        400,
        "shape [1, 63] does not match the model's [-1, 64]",
    ),
    (
        "count-mismatch",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp(data=[1.0] * 10)),
        {},
        400,
        "10 values given but shape [1, 64] needs 64",
    ),
    (
        "ragged",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp(shape=(2, 2), data=[[1.0, 2.0], [3.0]])),
        {},
        400,
        "non-ragged",
    ),
    (
        "strings-for-numbers",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp(data=["a"] * 64)),
        {},
        400,
        "must be numbers",
    ),
    (
        "bool-for-int",
        "POST",
        "/v2/models/types/infer",
        _body(_inp("in_INT32", "INT32", (1, 2), [True, False])),
        {},
        400,
        "must be numbers",
    ),
    (
        "int8-out-of-range",
        "POST",
        "/v2/models/types/infer",
        _body(_inp("in_INT8", "INT8", (1, 2), [1, 300])),
        {},
        400,
        "out of range for INT8",
    ),
    (
        "negative-shape",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp(shape=(-1, 64))),
        {},
        400,
        "negative dimension",
    ),
    (
        "shape-not-list",
        "POST",
        "/v2/models/digits/infer",
        _body({**_inp(), "shape": "1x64"}),
        {},
        400,
        "'shape' must be a list",
    ),
    (
        "unknown-input",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp(), _inp("extra")),
        {},
        400,
        "unknown input 'extra'; model digits takes: input",
    ),
    (
        "missing-input",
        "POST",
        "/v2/models/tabular/infer",
        _body(_inp("age", shape=(1, 1), data=[3.0])),
        {},
        400,
        "missing input 'city' (BYTES [-1, 1])",
    ),
    ("duplicate-input", "POST", "/v2/models/digits/infer", _body(_inp(), _inp()), {}, 400, "given twice"),
    (
        "bytes-not-strings",
        "POST",
        "/v2/models/tabular/infer",
        _body(_inp("age", shape=(1, 1), data=[3.0]), _inp("city", "BYTES", (1, 1), [5])),
        {},
        400,
        "BYTES data must be strings",
    ),
    (
        "unknown-output",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp(), outputs=[{"name": "logits"}]),
        {},
        400,
        "unknown output 'logits'; model digits has: label, probabilities",
    ),
    (
        "batch-mismatch",
        "POST",
        "/v2/models/tabular/infer",
        _body(_inp("age", shape=(2, 1), data=[3.0, 4.0]), _inp("city", "BYTES", (1, 1), ["oslo"])),
        {},
        400,
        "batch size 1 differs",
    ),
    (
        "header-length-past-body",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp()),
        {"Inference-Header-Content-Length": "99999"},
        400,
        "outside the body",
    ),
    (
        "header-length-not-number",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp()),
        {"Inference-Header-Content-Length": "ten"},
        400,
        "not a number",
    ),
    (
        "binary-size-wrong",
        "POST",
        "/v2/models/digits/infer",
        BIN_HEAD + b"\0" * 8,
        {"Inference-Header-Content-Length": str(len(BIN_HEAD))},
        400,
        "binary data has 8 bytes",
    ),
    (
        "binary-left-over",
        "POST",
        "/v2/models/digits/infer",
        _body(_inp()) + b"\0\0",
        {"Inference-Header-Content-Length": str(len(_body(_inp())))},
        400,
        "not claimed by any input",
    ),
    (
        "no-data",
        "POST",
        "/v2/models/digits/infer",
        _body({"name": "input", "datatype": "FP32", "shape": [1, 64]}),
        {},
        400,
        "neither 'data' nor binary_data_size",
    ),
    ("unknown-model", "POST", "/v2/models/nope/infer", _body(_inp()), {}, 404, "nope"),
    ("unknown-version", "POST", "/v2/models/digits/versions/42/infer", _body(_inp()), {}, 404, "version 42"),
    ("unknown-alias", "GET", "/v2/models/digits/versions/canary", b"", {}, 404, "canary"),
    ("path-trick-name", "GET", "/v2/models/a..b", b"", {}, 404, "no model named 'a..b'"),
    (
        "bad-version-ref",
        "GET",
        "/v2/models/digits/versions/v%21",
        b"",
        {},
        400,
        "neither a number nor an alias",
    ),
    ("unknown-route", "GET", "/v2/nothing/here", b"", {}, 404, "Not Found"),
    ("wrong-method", "GET", "/v2/models/digits/infer", b"", {}, 405, "Method Not Allowed"),
    ("huge-body", "POST", "/v2/models/digits/infer", b"[" + b"0," * 40_000 + b"0]", {}, 413, "over the"),
]


@pytest.fixture
def client(make_server: MakeServer) -> Iterator[httpx.Client]:
    server = make_server(ServeOptions(max_body_bytes=64_000), grpc=False)
    with httpx.Client(base_url=f"http://{server.url}") as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "fragment"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_malformed_request(
    client: httpx.Client,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    r = client.request(method, path, content=body or None, headers=headers)
    assert r.status_code == status, r.text
    doc = r.json()
    assert set(doc) == {"error"}
    assert fragment in doc["error"]
    assert "Traceback" not in r.text


def test_server_keeps_serving_after_bad_requests(client: httpx.Client) -> None:
    for case in CASES:
        client.request(case[1], case[2], content=case[3] or None, headers=case[4])
    r = client.post("/v2/models/digits/infer", content=_body(_inp()))
    assert r.status_code == 200
    errors = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("modelfab_request_errors_total")
    ]
    assert any('code="400"' in line and 'model="digits"' in line for line in errors)
