"""tritonclient.grpc, unmodified, against our gRPC endpoint."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from serve_helpers import ALL_TYPES, ServerThread
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def client(server: ServerThread) -> grpcclient.InferenceServerClient:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def test_server_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "modelfab"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "challenger")
    meta = client.get_model_metadata("tabular", as_json=True)
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("age", "FP32", ["-1", "1"]),
        ("city", "BYTES", ["-1", "1"]),
    ]
    assert meta["versions"] == ["1"]


def test_infer_raw_contents(client: grpcclient.InferenceServerClient) -> None:
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    inp = grpcclient.InferInput("input", [3, 64], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(
        "digits", [inp], request_id="r-1", outputs=[grpcclient.InferRequestedOutput("probabilities")]
    )
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert result.as_numpy("label") is None
    response = result.get_response(as_json=True)
    assert response["id"] == "r-1"
    assert len(response["parameters"]["prediction_id"]["string_param"]) == 32


def test_every_datatype_round_trips(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(1)
    inputs, expected = [], {}
    for t in ALL_TYPES:
        if t == "BYTES":
            arr = np.array([["a", "βeta"], ["", "zz"]], dtype=object)
        elif t == "BOOL":
            arr = np.array([[True, False], [False, True]])
        else:
            arr = rng.integers(0, 100, (2, 2)).astype(_np_dtype(t))
        inp = grpcclient.InferInput(
            f"in_{t}", [2, 2], np_to_triton_dtype(arr.dtype) if t != "BYTES" else "BYTES"
        )
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
        expected[f"out_in_{t}"] = arr
    result = client.infer("types", inputs)
    for name, arr in expected.items():
        got = result.as_numpy(name)
        if arr.dtype == object:
            assert [x.decode() for x in got.ravel()] == list(arr.ravel())
        else:
            np.testing.assert_array_equal(got, arr)


def test_aliases_and_versions(client: grpcclient.InferenceServerClient) -> None:
    x = np.zeros((1, 64), dtype=np.float32)
    inp = grpcclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    assert client.infer("digits", [inp], model_version="challenger").get_response().model_version == "2"
    assert client.infer("digits", [inp], model_version="1").get_response().model_version == "1"
    assert client.infer("digits", [inp]).get_response().model_version == "1"


@pytest.mark.parametrize(
    ("model", "version", "name", "shape", "status", "text"),
    [
        ("nope", "", "input", [1, 64], "StatusCode.NOT_FOUND", "nope"),
        ("digits", "7", "input", [1, 64], "StatusCode.NOT_FOUND", "version 7"),
        ("digits", "", "wrong", [1, 64], "StatusCode.INVALID_ARGUMENT", "unknown input 'wrong'"),
        ("digits", "", "input", [1, 63], "StatusCode.INVALID_ARGUMENT", "[-1, 64]"),
        ("broken", "", "x", [1, 4], "StatusCode.UNAVAILABLE", "sha256"),
    ],
)
def test_error_statuses(
    client: grpcclient.InferenceServerClient,
    model: str,
    version: str,
    name: str,
    shape: list[int],
    status: str,
    text: str,
) -> None:
    inp = grpcclient.InferInput(name, shape, "FP32")
    inp.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [inp], model_version=version)
    assert err.value.status() == status
    assert text in err.value.message()


def _np_dtype(t: str) -> type:
    return {
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
    }[t]
