"""Execution providers per model: chosen from what is installed, per recipe and per server, falling back to
CPU with one warning per model, shown in metadata and /metrics, and keying shared sessions."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest
from serve_helpers import FakeSource, MakeServer, digits_mlp
from typer.testing import CliRunner

from modelfab.errors import ConfigError
from modelfab.recipe import Serving
from modelfab.serve.models.providers import (
    CPU,
    CPU_ONLY,
    Providers,
    canonical_provider,
    choose_providers,
    parse_providers,
)
from modelfab.serve.models.runtime import OnnxModel
from modelfab.serve.models.shared import SharedGraphs, graph_key
from modelfab.serve.options import ServeOptions
from modelfab.serve.server import run_server

CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
AZURE = "AzureExecutionProvider"  # installed with the CPU build of ONNX Runtime: a real second provider
GPU_NODE = (TRT, CUDA, CPU)


@pytest.mark.parametrize(
    ("requested", "available", "providers", "missing"),
    [
        (None, (CPU,), (CPU,), ()),
        (None, GPU_NODE, (CUDA, CPU), ()),  # TensorRT builds engines per model: only when asked for
        (None, (OPENVINO, CPU), (CPU,), ()),
        ((TRT, CUDA), GPU_NODE, (TRT, CUDA, CPU), ()),
        ((CUDA, TRT), GPU_NODE, (CUDA, TRT, CPU), ()),  # the order asked for is kept
        ((CUDA,), (CPU,), (CPU,), (CUDA,)),
        ((TRT, CUDA), (CUDA, CPU), (CUDA, CPU), (TRT,)),
        ((CPU,), GPU_NODE, (CPU,), ()),  # CPU only, on a GPU node
        ((CPU, CUDA), (CUDA, CPU), (CUDA, CPU), ()),  # CPU is always last: ONNX Runtime's fallback
        ((OPENVINO,), (OPENVINO, CPU), (OPENVINO, CPU), ()),
    ],
)
def test_choose_providers(
    requested: tuple[str, ...] | None,
    available: tuple[str, ...],
    providers: tuple[str, ...],
    missing: tuple[str, ...],
) -> None:
    choice = choose_providers(requested, available)
    assert choice.providers == providers
    assert choice.missing == missing


def test_provider_names() -> None:
    assert canonical_provider("cuda") == CUDA
    assert canonical_provider(" TensorRT ") == TRT
    assert canonical_provider("cudaexecutionprovider") == CUDA
    assert canonical_provider("ROCMExecutionProvider") == "ROCMExecutionProvider"
    assert parse_providers(["cuda", "CPU", "CUDAExecutionProvider"]) == (CUDA, CPU)
    for bad in ("gpu", "", "ExecutionProvider", "cuda;rm"):
        with pytest.raises(ValueError, match="unknown execution provider"):
            canonical_provider(bad)


def test_recipe_serving_section_checks_and_normalises_providers() -> None:
    assert Serving.model_validate({"providers": ["cuda", "cpu"]}).providers == [CUDA, CPU]
    assert Serving.model_validate({}).providers is None
    assert Serving().model_dump() == {"max_batch_size": 64, "max_wait_ms": 2.0}  # recipe digests unchanged
    assert Serving.model_validate({"providers": ["cuda"]}).model_dump()["providers"] == [CUDA]
    with pytest.raises(ValueError, match="unknown execution provider 'gpu'"):
        Serving.model_validate({"providers": ["gpu"]})


def test_server_refuses_unknown_provider_names() -> None:
    with pytest.raises(ConfigError, match="--providers: unknown execution provider 'gpu'"):
        run_server(None, providers=("cuda", "gpu"))


def test_missing_provider_falls_back_to_cpu_with_one_warning_per_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = Providers(available=(CPU,))
    with caplog.at_level(logging.WARNING, logger="modelfab.serve"):
        for _ in range(3):
            assert policy.for_model("cam-1", {"providers": [CUDA]}) == CPU_ONLY
        assert policy.for_model("cam-2", {"providers": ["tensorrt", "cuda"]}) == CPU_ONLY
        assert policy.for_model("cam-3", {}) == CPU_ONLY  # nothing asked for, nothing to warn about
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "cam-1 asks for CUDAExecutionProvider" in warnings[0]
    assert "cam-2 asks for TensorrtExecutionProvider, CUDAExecutionProvider" in warnings[1]


def test_recipe_providers_win_over_the_servers() -> None:
    policy = Providers(["cuda"], available=GPU_NODE)
    assert policy.for_model("a", {}) == (CUDA, CPU)
    assert policy.for_model("b", {"providers": [TRT, CUDA]}) == (TRT, CUDA, CPU)
    assert policy.for_model("c", {"providers": [CPU]}) == CPU_ONLY


def test_a_provider_that_does_not_start_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    policy = Providers(available=GPU_NODE)
    with caplog.at_level(logging.WARNING, logger="modelfab.serve"):
        policy.settled("m", (CUDA, CPU), (CPU,))
        policy.settled("m", (CUDA, CPU), (CPU,))
        policy.settled("n", (CUDA, CPU), (CUDA, CPU))
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"model m: ONNX Runtime could not start {CUDA}; it runs on {CPU}"]


def test_installed_providers_come_from_onnxruntime() -> None:
    assert Providers().available == tuple(ort.get_available_providers())


def test_session_reports_the_providers_it_runs_on() -> None:
    blob = digits_mlp((8,))
    assert OnnxModel("m", 1, blob).providers == CPU_ONLY
    assert OnnxModel("m", 1, blob, providers=(AZURE, CPU)).providers == (AZURE, CPU)


def test_shared_sessions_are_per_provider_set() -> None:
    blob = digits_mlp((8,))
    shared = SharedGraphs()
    on_cpu = [shared.load(f"c{i}", 1, f"c{i}", blob) for i in range(2)]
    other = shared.load("o", 1, "o", blob, (AZURE, CPU))
    assert all(m is not None for m in (*on_cpu, other))
    assert on_cpu[0] is not None and on_cpu[1] is not None and other is not None
    assert on_cpu[0].shared_key == on_cpu[1].shared_key
    assert other.shared_key != on_cpu[0].shared_key
    assert other.shared_key == graph_key(on_cpu[0].shared_key or "", (AZURE, CPU))
    assert len(shared) == 2
    assert other.providers == (AZURE, CPU) and on_cpu[0].providers == CPU_ONLY


def _provider_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("modelfab_model_provider{")]


def test_server_shows_providers_in_metadata_and_metrics(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    src = FakeSource()
    src.add("wants-gpu", digits_mlp((8,)), serving={"providers": [CUDA]})
    src.add("azure", digits_mlp((8,), seed=1), serving={"providers": [AZURE, CPU]})
    src.add("plain", digits_mlp((8,), seed=2))
    with caplog.at_level(logging.WARNING, logger="modelfab.serve"):
        server = make_server(ServeOptions(providers=(CPU,)), grpc=False, src=src)
        with httpx.Client(base_url=f"http://{server.url}") as client:
            for _ in range(3):
                meta = client.get("/v2/models/wants-gpu").json()
                assert meta["parameters"] == {"execution_providers": CPU}
            for name, providers in (("azure", f"{AZURE},{CPU}"), ("plain", CPU)):
                meta = client.get(f"/v2/models/{name}").json()
                assert meta["parameters"]["execution_providers"] == providers
            lines = _provider_lines(client.get("/metrics").text)
            assert sorted(lines) == [
                f'modelfab_model_provider{{model="azure",provider="{AZURE}",version="1"}} 1.0',
                f'modelfab_model_provider{{model="plain",provider="{CPU}",version="1"}} 1.0',
                f'modelfab_model_provider{{model="wants-gpu",provider="{CPU}",version="1"}} 1.0',
            ]
            assert client.post("/v2/repository/models/azure/unload").status_code == 200
            lines = _provider_lines(client.get("/metrics").text)
            assert not [line for line in lines if 'model="azure"' in line]
    warned = [r.getMessage() for r in caplog.records if "asks for" in r.getMessage()]
    assert len(warned) == 1 and "wants-gpu" in warned[0]


def test_cli_serve_takes_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelfab.serve
    from modelfab.cli.main import app

    monkeypatch.setenv("MODELFAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    got: dict[str, object] = {}
    monkeypatch.setattr(modelfab.serve, "run_server", lambda settings, **kw: got.update(kw))
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--providers", "tensorrt, cuda,cpu"])
    assert result.exit_code == 0, result.output
    assert got["providers"] == ("tensorrt", "cuda", "cpu")  # run_server checks and normalises them
    assert "--providers" in CliRunner().invoke(app, ["serve", "--help"]).output
