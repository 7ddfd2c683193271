"""tritonclient.http, unmodified, against our REST endpoint (JSON and binary tensors)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from serve_helpers import ALL_TYPES, FakeSource, ServerThread
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NP = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


# tritonclient.http closes its gevent pool again in __del__, which fails when the garbage collector happens to
# run in another thread (the server's); keeping closed clients referenced leaves them to interpreter exit.
_CLOSED: list[httpclient.InferenceServerClient] = []


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()
    _CLOSED.append(c)


def _sample(t: str) -> np.ndarray:
    if t == "BYTES":
        return np.array([["a", "βeta"], ["", "z z"]], dtype=object)
    if t == "BOOL":
        return np.array([[True, False], [False, True]])
    return (np.arange(4).reshape(2, 2) * 7 + 1).astype(NP[t])


def test_server_and_model_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "modelfab"
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert client.get_model_metadata("digits", "challenger")["versions"] == ["2"]
    assert client.is_model_ready("digits", "1")
    types = client.get_model_metadata("types")
    assert [i["datatype"] for i in types["inputs"]] == list(ALL_TYPES)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips(client: httpclient.InferenceServerClient, binary: bool) -> None:
    inputs, outputs = [], []
    for t in ALL_TYPES:
        inp = httpclient.InferInput(f"in_{t}", [2, 2], t)
        inp.set_data_from_numpy(_sample(t), binary_data=binary)
        inputs.append(inp)
        outputs.append(httpclient.InferRequestedOutput(f"out_in_{t}", binary_data=binary))
    result = client.infer("types", inputs, outputs=outputs, request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    for inp in inputs:
        t = inp.datatype()
        got = result.as_numpy(f"out_{inp.name()}")
        want = _sample(t)
        if t == "BYTES":
            assert [x.decode() if isinstance(x, bytes) else x for x in got.ravel()] == list(want.ravel())
        else:
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype


def test_tabular_model_with_string_column(client: httpclient.InferenceServerClient) -> None:
    age = httpclient.InferInput("age", [3, 1], "FP32")
    age.set_data_from_numpy(np.array([[20], [60], [30]], dtype=np.float32))
    city = httpclient.InferInput("city", [3, 1], "BYTES")
    city.set_data_from_numpy(np.array([["oslo"], ["lima"], ["mars"]], dtype=object))
    result = client.infer("tabular", [age, city])
    assert result.as_numpy("label").shape == (3,)
    assert result.as_numpy("probabilities").shape == (3, 2)
    assert len(result.get_response()["parameters"]["prediction_id"]) == 32


def test_requested_outputs_only(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
    result = client.infer("digits", [inp], outputs=[httpclient.InferRequestedOutput("label")])
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("label").shape == (1,)


def test_aliases_route_to_versions(client: httpclient.InferenceServerClient, source: FakeSource) -> None:
    inp = httpclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
    assert client.infer("digits", [inp]).get_response()["model_version"] == "1"
    assert client.infer("digits", [inp], model_version="champion").get_response()["model_version"] == "1"
    assert client.infer("digits", [inp], model_version="challenger").get_response()["model_version"] == "2"
    assert client.infer("digits", [inp], model_version="2").get_response()["model_version"] == "2"


def test_repository_extension(client: httpclient.InferenceServerClient, server: ServerThread) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert set(index) >= {"digits", "types", "tabular"}
    assert index["tabular"]["state"] == "UNLOADED"
    client.load_model("tabular")
    assert server.service.cache.is_loaded("tabular", 1)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["tabular"]["state"] == "READY"
    client.unload_model("tabular")
    assert not server.service.cache.is_loaded("tabular", 1)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("nope")
    assert err.value.status() == "404"


@pytest.mark.parametrize(
    ("model", "version", "status", "text"),
    [
        ("nope", "", "404", "nope"),
        ("digits", "9", "404", "version 9"),
        ("digits", "canary", "404", "canary"),
        ("broken", "", "503", "sha256"),
    ],
)
def test_error_statuses(
    client: httpclient.InferenceServerClient, model: str, version: str, status: str, text: str
) -> None:
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [inp], model_version=version)
    assert err.value.status() == status
    assert text in err.value.message()


def test_digest_mismatch_leaves_other_models_serving(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("broken", [inp])
    assert client.infer("double", [inp]).as_numpy("y").tolist() == [[2.0] * 4]
