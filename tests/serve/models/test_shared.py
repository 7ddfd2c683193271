"""Small models that differ only in their weights run on one shared session, and compute what their own
session computes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from serve_helpers import FakeSource, MakeServer, digits_mlp, doubler_model, tabular_pipeline

from modelfab.errors import InvalidInputError
from modelfab.serve.models.cache import ModelCache
from modelfab.serve.models.runtime import OnnxModel
from modelfab.serve.models.shared import MODEL_OVERHEAD_BYTES, SharedGraphs, split_weights
from modelfab.serve.options import ServeOptions
from modelfab.serve.service import InferenceService


def variants(blob: bytes, n: int) -> list[bytes]:
    """``n`` models with one architecture and different weights (every float initializer scaled)."""
    out = []
    for i in range(n):
        model = onnx.load_from_string(blob)
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT:
                array = numpy_helper.to_array(init) * np.float32(1 + 0.05 * (i + 1))
                init.CopyFrom(numpy_helper.from_array(array.astype(np.float32), init.name))
        out.append(model.SerializeToString())
    return out


@pytest.fixture(scope="module")
def mlps() -> list[bytes]:
    return variants(digits_mlp((16,)), 6)


def _own_session(blob: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(blob, providers=["CPUExecutionProvider"])


def test_models_of_one_architecture_split_to_one_graph(mlps: list[bytes]) -> None:
    splits = [split_weights(b) for b in mlps]
    assert all(s is not None for s in splits)
    keys = {s.key for s in splits if s is not None}
    assert len(keys) == 1
    first = splits[0]
    assert first is not None
    # 64x16 and 16x10 weights and their biases, as the model's own arrays.
    assert sorted(a.shape for a in first.weights.values()) == sorted([(64, 16), (1, 16), (16, 10), (1, 10)])
    other = split_weights(digits_mlp((24,)))
    assert other is not None and other.key != first.key


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (tabular_pipeline(), "weights are attributes (Scaler, LinearClassifier)"),
        (doubler_model([None, 4]), "one scalar: the graph is most of the model"),
        (b"not a protobuf at all", "unreadable"),
    ],
)
def test_models_that_do_not_share(blob: bytes, why: str) -> None:
    assert split_weights(blob) is None, why


def test_a_subgraph_keeps_its_own_session() -> None:
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", onnx.TensorProto.FLOAT, [None, 4])],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4]),
            helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 4])],
        [weight],
    )
    blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert split_weights(blob) is None


def test_shared_models_compute_what_their_own_sessions_compute(mlps: list[bytes]) -> None:
    shared = SharedGraphs()
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    models = [shared.load(f"m{i}", 1, f"d{i}", b) for i, b in enumerate(mlps)]
    assert len(shared) == 1
    for model, blob in zip(models, mlps, strict=True):
        assert model is not None
        got = model.run({"input": x})
        want = dict(zip(["label", "probabilities"], _own_session(blob).run(None, {"input": x}), strict=True))
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6)
    # Different weights, different answers: the weights really are the model's own.
    probs = [m.run({"input": x})["probabilities"] for m in models if m is not None]
    assert not np.allclose(probs[0], probs[1])


def test_weights_are_not_a_clients_inputs(mlps: list[bytes]) -> None:
    model = SharedGraphs().load("m", 1, "d", mlps[0])
    assert model is not None
    assert [s.name for s in model.inputs] == ["input"]
    assert model.batchable
    split = split_weights(mlps[0])
    assert split is not None
    weight = next(iter(split.weights))
    feeds = {"input": np.zeros((1, 64), np.float32), weight: np.zeros((64, 16), np.float32)}
    with pytest.raises(InvalidInputError, match=f"unknown input '{weight}'"):
        model.check(feeds)


def test_a_weight_named_in_a_request_is_refused(
    make_server: MakeServer, onnx_models: dict[str, bytes]
) -> None:
    server = make_server(grpc=False)
    split = split_weights(onnx_models["digits"])
    assert split is not None
    weight = next(iter(split.weights))
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64},
            {"name": weight, "datatype": "FP32", "shape": [1, 1], "data": [0.0]},
        ]
    }
    r = httpx.post(f"http://{server.url}/v2/models/digits/infer", json=body)
    assert r.status_code == 400
    assert f"unknown input '{weight}'" in r.json()["error"]
    ok = httpx.post(f"http://{server.url}/v2/models/digits/infer", json={"inputs": body["inputs"][:1]})
    assert ok.status_code == 200


def test_cache_charges_weights_and_keeps_one_graph(mlps: list[bytes]) -> None:
    source = FakeSource()
    for i, blob in enumerate(mlps):
        source.add(f"m{i}", blob)
    split = split_weights(mlps[0])
    assert split is not None
    per_model = sum(a.nbytes for a in split.weights.values()) + MODEL_OVERHEAD_BYTES
    shared = SharedGraphs(keep_idle=0)

    async def scenario() -> None:
        # Room for the shared graph and three models.
        probe = SharedGraphs()
        probe.load("p", 1, "p", mlps[0])
        cache = ModelCache(source.fetch, probe.resident_bytes + 3 * per_model, shared=shared)
        infos = [source.resolve(f"m{i}", None) for i in range(len(mlps))]
        async with cache.use(infos[0]):  # in flight: never evicted
            for info in infos[1:]:
                async with cache.use(info) as model:
                    assert model.shared_key is not None
                    assert model.resident_bytes == per_model
                assert cache.is_loaded("m0", 1)
            assert len(cache.loaded()) == 3
            assert cache.used == 3 * per_model
            assert len(shared) == 1
        for name, _ in cache.loaded():
            cache.unload(name)
        assert cache.used == 0
        assert len(shared) == 0  # no model on it and none kept idle: the graph's session is gone
        assert shared.resident_bytes == 0

    asyncio.run(scenario())


def test_a_shared_model_whose_artifact_is_corrupt_is_refused(mlps: list[bytes]) -> None:
    source = FakeSource()
    source.add("bad", mlps[0], corrupt=True)
    cache = ModelCache(source.fetch, 64 << 20, shared=SharedGraphs())

    async def scenario() -> None:
        with pytest.raises(Exception, match="sha256"):
            async with cache.use(source.resolve("bad", None)):
                pass

    asyncio.run(scenario())
    assert not cache.loaded()


def test_own_session_when_sharing_is_off(mlps: list[bytes]) -> None:
    model = OnnxModel("m", 1, mlps[0])
    assert model.shared_key is None
    assert model.resident_bytes > len(mlps[0])


def test_no_shared_graphs_gives_every_model_its_own_session(source: FakeSource, tmp_path: Path) -> None:
    service = InferenceService(source, ServeOptions(share_graphs=False), home=tmp_path)

    async def scenario() -> None:
        async with service.cache.use(source.resolve("digits", None)) as model:
            assert model.shared_key is None
        await service.stop()

    assert service.cache.shared is None
    asyncio.run(scenario())


def test_the_cli_passes_no_shared_graphs_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import modelfab.serve
    from modelfab.cli.main import app

    seen: dict[str, object] = {}
    monkeypatch.setattr(modelfab.serve, "run_server", lambda *a, **kw: seen.update(kw))
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--no-shared-graphs"])
    assert result.exit_code == 0, result.output
    assert seen["share_graphs"] is False
