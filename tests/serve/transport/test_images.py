"""Raw UINT8 images over OIP v2: an image classifier graph (uint8 NHWC in, preprocessing inside, string label
and probabilities out), called with the unmodified tritonclient HTTP and gRPC clients in binary tensor data,
checked against ONNX Runtime directly; and images of the wrong datatype or size get a clear 400."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from serve_helpers import FakeSource, MakeServer, ServerThread
from tritonclient.utils import InferenceServerException

from modelfab.serve.options import ServeOptions

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 32
CLASSES = ["bike", "empty", "person"]
# tritonclient.http closes its gevent pool again in __del__, which fails when the garbage collector runs in
# the server's thread; closed clients stay referenced until interpreter exit (as in test_conformance_http).
_CLOSED: list[httpclient.InferenceServerClient] = []


def image_classifier(seed: int = 0, size: int = SIZE, classes: list[str] = CLASSES) -> bytes:
    """A tiny conv net shaped like the factory's exported image models: ``image`` UINT8 [-1, H, W, 3] in,
    cast, scaled, normalised and transposed to NCHW inside the graph; ``label`` (the class names, strings)
    and ``probabilities`` [-1, classes] out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    k = len(classes)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(array, name)

    inits = [
        init("scale", np.array(1 / 255, dtype=np.float32)),
        init("mean", np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 1, 1, 3)),
        init("std", np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 1, 1, 3)),
        init("conv_w", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
        init("conv_b", rng.normal(0, 0.1, 8).astype(np.float32)),
        init("fc_w", rng.normal(0, 0.5, (8, k)).astype(np.float32)),
        init("fc_b", rng.normal(0, 0.1, k).astype(np.float32)),
        helper.make_tensor("classes", TensorProto.STRING, [k], [c.encode() for c in classes]),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels", "scale"], ["unit"]),
        helper.make_node("Sub", ["unit", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["nhwc"]),
        helper.make_node("Transpose", ["nhwc"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["index"], axis=1, keepdims=0),
        helper.make_node("Gather", ["classes", "index"], ["label"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "camera_cnn",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [None, size, size, 3])],
        [
            helper.make_tensor_value_info("label", TensorProto.STRING, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, k]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def camera_images(n: int, seed: int = 1, size: int = SIZE) -> np.ndarray:
    """``n`` RGB images with structure (a bright square on a gradient), so the classes vary."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, size, dtype=np.float32)[None, :, None, None]
    images = np.broadcast_to(base, (n, size, size, 3)).copy()
    for i in range(n):
        y, x = rng.integers(0, size - 8, 2)
        images[i, y : y + 8, x : x + 8] = rng.integers(0, 256, 3)
    images += rng.normal(0, 12, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cameras() -> dict[str, bytes]:
    return {"cam-a": image_classifier(0), "cam-b": image_classifier(1)}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return camera_images(6)


def expected(blob: bytes, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"image": images})
    return np.asarray(label), np.asarray(probabilities)


@pytest.fixture(params=[True, False], ids=["shared-graph", "own-session"])
def image_server(
    request: pytest.FixtureRequest, make_server: MakeServer, cameras: dict[str, bytes]
) -> ServerThread:
    src = FakeSource()
    for name, blob in cameras.items():
        src.add(name, blob)
    return make_server(ServeOptions(share_graphs=request.param), src=src)


@pytest.fixture
def http_client(image_server: ServerThread) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(image_server.url)
    yield c
    c.close()
    _CLOSED.append(c)


@pytest.fixture
def grpc_client(image_server: ServerThread) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(image_server.grpc_url)
    yield c
    c.close()


def test_graph_predicts_more_than_one_class(cameras: dict[str, bytes], images: np.ndarray) -> None:
    # Otherwise the label comparisons below could pass with a server that answers any one class.
    labels = {str(v) for blob in cameras.values() for v in expected(blob, images)[0]}
    assert len(labels) >= 2


def test_image_metadata(http_client: httpclient.InferenceServerClient) -> None:
    meta = http_client.get_model_metadata("cam-a")
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, 3]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("label", "BYTES"),
        ("probabilities", "FP32"),
    ]


def test_uint8_images_over_http_binary(
    image_server: ServerThread,
    http_client: httpclient.InferenceServerClient,
    cameras: dict[str, bytes],
    images: np.ndarray,
) -> None:
    for name, blob in cameras.items():
        inp = httpclient.InferInput("image", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images, binary_data=True)
        outputs = [
            httpclient.InferRequestedOutput("label", binary_data=True),
            httpclient.InferRequestedOutput("probabilities", binary_data=True),
        ]
        result = http_client.infer(name, [inp], outputs=outputs)
        want_label, want_probs = expected(blob, images)
        assert [v.decode() for v in result.as_numpy("label")] == [str(v) for v in want_label]
        probs = result.as_numpy("probabilities")
        assert probs.dtype == np.float32 and probs.shape == (len(images), len(CLASSES))
        np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-6)
    # Per-camera models of one architecture run on one shared session (when sharing is on).
    shared = image_server.service.cache.shared
    assert (len(shared) if shared is not None else 0) == (
        1 if image_server.service.options.share_graphs else 0
    )


def test_uint8_images_over_grpc(
    grpc_client: grpcclient.InferenceServerClient, cameras: dict[str, bytes], images: np.ndarray
) -> None:
    for name, blob in cameras.items():
        inp = grpcclient.InferInput("image", list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)  # raw_input_contents: gRPC's binary tensor data
        result = grpc_client.infer(name, [inp])
        want_label, want_probs = expected(blob, images)
        assert [v.decode() for v in result.as_numpy("label")] == [str(v) for v in want_label]
        np.testing.assert_allclose(result.as_numpy("probabilities"), want_probs, rtol=1e-5, atol=1e-6)


def test_concurrent_single_images_batch_to_the_same_answers(
    image_server: ServerThread, cameras: dict[str, bytes], images: np.ndarray
) -> None:
    # One image per request, many at once: the batcher stacks them along the batch axis.
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> str:
        c = httpclient.InferenceServerClient(image_server.url)
        try:
            inp = httpclient.InferInput("image", [1, SIZE, SIZE, 3], "UINT8")
            inp.set_data_from_numpy(images[i : i + 1], binary_data=True)
            result = c.infer("cam-b", [inp], outputs=[httpclient.InferRequestedOutput("label")])
            return str(result.as_numpy("label")[0].decode())
        finally:
            c.close()
            _CLOSED.append(c)

    with ThreadPoolExecutor(len(images)) as pool:
        got = list(pool.map(one, range(len(images))))
    assert got == [str(v) for v in expected(cameras["cam-b"], images)[0]]


@pytest.mark.parametrize(
    ("array", "datatype", "message"),
    [
        (camera_images(2).astype(np.float32), "FP32", "input 'image': expected datatype UINT8, got FP32"),
        (
            camera_images(2, size=16),
            "UINT8",
            "input 'image': shape [2, 16, 16, 3] does not match the model's",
        ),
        (
            camera_images(2).transpose(0, 3, 1, 2).copy(),
            "UINT8",
            "input 'image': shape [2, 3, 32, 32] does not match the model's [-1, 32, 32, 3]",
        ),
        (camera_images(2)[..., 0].copy(), "UINT8", "input 'image': shape [2, 32, 32] does not match"),
    ],
    ids=["fp32", "16x16", "nchw", "no-channels"],
)
def test_bad_images_get_a_clear_400(
    image_server: ServerThread,
    http_client: httpclient.InferenceServerClient,
    grpc_client: grpcclient.InferenceServerClient,
    array: np.ndarray,
    datatype: str,
    message: str,
) -> None:
    inp = httpclient.InferInput("image", list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=True)
    with pytest.raises(InferenceServerException) as http_err:
        http_client.infer("cam-a", [inp])
    assert http_err.value.status() == "400"
    assert message in http_err.value.message()
    ginp = grpcclient.InferInput("image", list(array.shape), datatype)
    ginp.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException) as grpc_err:
        grpc_client.infer("cam-a", [ginp])
    assert grpc_err.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    assert message in grpc_err.value.message()
    # The error shape, as a plain JSON client sees it.
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": datatype,
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
        ]
    }
    response = httpx.post(f"http://{image_server.url}/v2/models/cam-a/infer", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]
