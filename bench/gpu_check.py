"""GPU check for an NVIDIA machine: is the accelerator usable end to end by what modelfab runs on it?

    python bench/gpu_check.py [--json results.json] [--batch 128] [--gpu-steps 40] [--cpu-steps 6]

Run by hand on a GPU node (CI never runs it); on a machine without CUDA it reports what it cannot check and
still exits 0. Needs torch, onnx, onnxruntime and numpy only (modelfab's provider policy and model runtime
are used when ``modelfab`` imports, else ONNX Runtime directly). In order:

1. CUDA as torch sees it (device, capability, memory) and ONNX Runtime's installed execution providers
   (the plain ``onnxruntime`` wheel has no CUDAExecutionProvider: ``onnxruntime-gpu`` brings it).
2. Training throughput of a small CNN on 32x32 uint8 images (preprocessing inside the model, as the factory
   exports it), CUDA against CPU, same batch: samples/s and their ratio.
3. DistributedDataParallel with one process: nccl on the GPU (gloo on CPU as well, as a baseline of the path).
4. Export to ONNX (dynamic batch axis, uint8 NHWC input), parity against torch, and serving it through ONNX
   Runtime with CUDAExecutionProvider when installed (CPU otherwise, and said so): images/s.

Prints one table; every check either gives a figure, says "skipped: <why>", or says FAILED with the error
(then the exit status is 1). Everything is sized to finish well under 3 minutes on a 2-core CPU-only machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 32
CLASSES = 10
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


@dataclass
class Row:
    check: str
    status: str  # ok, skipped, FAILED
    result: str
    detail: str = ""


ROWS: list[Row] = []


def ok(check: str, result: str, detail: str = "") -> None:
    ROWS.append(Row(check, "ok", result, detail))
    print(f"ok: {check}: {result}{f' ({detail})' if detail else ''}", flush=True)


def skipped(check: str, why: str) -> None:
    ROWS.append(Row(check, "skipped", "", why))
    print(f"skipped: {check}: {why}", flush=True)


@contextlib.contextmanager
def guarded(check: str) -> Iterator[None]:
    """A check that raises is reported FAILED and the others still run."""
    try:
        yield
    except Exception as exc:
        ROWS.append(Row(check, "FAILED", "", f"{type(exc).__name__}: {exc}"))
        print(f"FAILED: {check}: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc(limit=3)


# -- the model -------------------------------------------------------------------------------------------
def make_cnn() -> Any:
    """A small conv net that takes uint8 NHWC images and does its own preprocessing, as exported models do."""
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)
            layers: list[nn.Module] = []
            channels = 3
            for width in (32, 64, 128):
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                layers.append(nn.MaxPool2d(2))
                channels = width
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(channels, CLASSES)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
            x = self.features(x).mean(dim=(2, 3))
            return torch.softmax(self.head(x), dim=1)

    return SmallCNN()


def synthetic(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, batch)
    images = rng.integers(0, 60, (batch, SIZE, SIZE, 3)).astype(np.int64)
    for i, label in enumerate(labels):  # a class-dependent bright patch: something to learn
        y, x = divmod(int(label), 4)
        images[i, y * 8 : y * 8 + 8, x * 8 : x * 8 + 8] += 150
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.int64)


def train_steps(model: Any, device: str, images: np.ndarray, labels: np.ndarray, steps: int) -> float:
    """Samples/s over ``steps`` timed training steps after two warm-up steps."""
    import torch

    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.from_numpy(images).to(device)
    y = torch.from_numpy(labels).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.nll_loss(torch.log(model(x) + 1e-9), y)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * len(images) / (time.perf_counter() - started)


# -- checks ----------------------------------------------------------------------------------------------
def check_environment() -> tuple[bool, tuple[str, ...]]:
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        ok(
            "torch CUDA",
            f"{torch.cuda.device_count()} x {props.name}",
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, capability {props.major}.{props.minor}, "
            f"{props.total_memory / 2**30:.0f} GiB",
        )
    else:
        skipped(
            "torch CUDA", f"torch {torch.__version__} sees no CUDA device (build CUDA {torch.version.cuda})"
        )
    providers = tuple(ort.get_available_providers())
    ok("onnxruntime providers", ", ".join(providers), f"onnxruntime {ort.__version__}")
    if CUDA_EP not in providers:
        skipped(
            "onnxruntime CUDA",
            f"onnxruntime {ort.__version__} has no {CUDA_EP} (onnxruntime-gpu is not installed)",
        )
    return cuda, providers


def check_training(cuda: bool, batch: int, cpu_steps: int, gpu_steps: int) -> None:
    import torch

    torch.manual_seed(0)
    images, labels = synthetic(batch)
    cpu_rate = 0.0
    with guarded("train CPU"):
        cpu_rate = train_steps(make_cnn(), "cpu", images, labels, cpu_steps)
        ok(
            "train CPU",
            f"{cpu_rate:,.0f} samples/s",
            f"batch {batch}, {cpu_steps} steps, {torch.get_num_threads()} threads",
        )
    if not cuda:
        skipped("train CUDA", "no CUDA device")
        return
    with guarded("train CUDA"):
        gpu_rate = train_steps(make_cnn(), "cuda", images, labels, gpu_steps)
        ratio = f", {gpu_rate / cpu_rate:.1f}x CPU" if cpu_rate else ""
        ok("train CUDA", f"{gpu_rate:,.0f} samples/s{ratio}", f"batch {batch}, {gpu_steps} steps, fp32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def check_ddp(backend: str, device: str, batch: int, steps: int) -> None:
    """DDP with world size 1 in this process: the process group, the wrapper and an all-reduce per step."""
    import datetime

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    check = f"DDP {backend} ({device}, world 1)"
    with guarded(check):
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{_free_port()}",
            rank=0,
            world_size=1,
            timeout=datetime.timedelta(seconds=60),
        )
        try:
            model = make_cnn().to(device)
            ddp = DistributedDataParallel(model, device_ids=[0] if device == "cuda" else None)
            images, labels = synthetic(batch, seed=1)
            rate = train_steps(ddp, device, images, labels, steps)
            probe = torch.ones(4, device=device)
            dist.all_reduce(probe)
            if device == "cuda":
                torch.cuda.synchronize()
            if probe.sum().item() != 4:
                raise RuntimeError(f"all_reduce of ones over 1 rank gave {probe.tolist()}")
            ok(check, f"{rate:,.0f} samples/s", f"batch {batch}, {steps} steps, all_reduce checked")
        finally:
            dist.destroy_process_group()


def export_onnx(model: Any) -> bytes:
    import torch

    model = model.cpu().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) warns that it is legacy; it needs no onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8),),
            buffer,
            dynamo=False,
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17,
        )
    return buffer.getvalue()


def _session(
    onnx: bytes, providers: tuple[str, ...]
) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[str, ...], str]:
    """A run function, the providers it really runs on, and which code path built it."""
    try:
        from modelfab.serve.models.providers import Providers
        from modelfab.serve.models.runtime import OnnxModel
    except ImportError:
        import onnxruntime as ort

        wanted = [p for p in (CUDA_EP, CPU_EP) if p in providers]
        session = ort.InferenceSession(onnx, providers=wanted)
        return (lambda x: session.run(None, {"image": x})[0]), tuple(session.get_providers()), "onnxruntime"
    policy = Providers(available=providers)
    model = OnnxModel("gpu-check", 1, onnx, providers=policy.for_model("gpu-check", {}))
    return (lambda x: model.run({"image": x})["probabilities"]), model.providers, "modelfab OnnxModel"


def check_serving(cuda: bool, providers: tuple[str, ...], batch: int, seconds: float) -> None:
    import torch

    run: Callable[[np.ndarray], np.ndarray] | None = None
    with guarded("export + parity"):
        torch.manual_seed(0)
        model = make_cnn()
        images, labels = synthetic(batch, seed=2)
        train_steps(model, "cuda" if cuda else "cpu", images, labels, 3)
        model = model.cpu().eval()
        onnx = export_onnx(model)
        run, used, path = _session(onnx, providers)
        probe, _ = synthetic(7, seed=3)  # an odd batch: the batch axis is dynamic
        with torch.no_grad():
            want = model(torch.from_numpy(probe)).numpy()
        got = run(probe)
        diff = float(np.abs(got - want).max())
        # GPU convolutions (TF32, other algorithms) differ from CPU ones more than CPU runs among themselves.
        limit = 1e-2 if used[0] == CUDA_EP else 1e-4
        if diff > limit or (got.argmax(1) != want.argmax(1)).mean() > 0.2:
            raise RuntimeError(f"ONNX output differs from torch's by {diff:.2e} (limit {limit})")
        ok("export + parity", f"max |diff| {diff:.1e}", f"{len(onnx) / 1024:.0f} KiB, batch 7, {path}")
    if CUDA_EP not in providers:
        skipped("serve on CUDAExecutionProvider", "onnxruntime-gpu is not installed; serving on CPU below")
    if run is None:
        skipped("serve ONNX", "no exported model (see export + parity)")
        return
    with guarded("serve ONNX"):
        run(images)  # warm-up (CUDA EP picks kernels on the first run)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            run(images)
            count += 1
        rate = count * len(images) / (time.perf_counter() - started)
        ok(
            f"serve ONNX on {used[0]}",
            f"{rate:,.0f} images/s",
            f"batch {len(images)}, providers {', '.join(used)}",
        )


def check_factory_trainer(cuda: bool) -> None:
    """modelfab's own per-partition trainer (factory/trainers/torch.py) on the device a recipe with
    ``resources.gpus: 1`` gets, then its ONNX export checked against torch."""
    try:
        from modelfab.factory.torch_export import torch_to_onnx
        from modelfab.factory.trainers.torch import TorchParams, build_network, fit_network, training_device
    except ImportError as exc:
        skipped("factory trainer", f"modelfab's dependencies are not importable here: {exc}")
        return
    images, labels = synthetic(256, seed=3)
    labels = labels % 2
    p = TorchParams.of({"epochs": 3, "batch_size": 64, "channels": 16, "depth": 3})
    device = training_device(1.0)
    if cuda and device != "cuda":
        raise RuntimeError(f"resources.gpus 1 trained on {device} although CUDA is there")
    net = build_network("cnn", p, 2)
    started = time.perf_counter()
    fit_network(net, images, labels, p, seed=0, device=device)
    took = time.perf_counter() - started
    on = {str(q.device) for q in net.parameters()}
    if on != {"cpu"}:
        raise RuntimeError(f"the trained network came back on {on}, not the CPU")
    graph = torch_to_onnx(net, image_shape=(images.shape[1], images.shape[2]), classes=np.array(["0", "1"]))
    ok(
        "factory trainer",
        f"{3 * len(images) / took:,.0f} samples/s on {device}",
        f"ONNX {len(graph) // 1024} KiB",
    )


def print_table() -> None:
    header = Row("check", "status", "result", "detail")
    widths = [max(len(getattr(r, f)) for r in (header, *ROWS)) for f in ("check", "status", "result")]
    print()
    for r in (header, *ROWS):
        print(f"{r.check:<{widths[0]}}  {r.status:<{widths[1]}}  {r.result:<{widths[2]}}  {r.detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batch", type=int, default=128, help="training batch (same on CPU and CUDA)")
    parser.add_argument("--cpu-steps", type=int, default=6)
    parser.add_argument("--gpu-steps", type=int, default=40)
    parser.add_argument("--serve-seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        import torch
    except ImportError as exc:
        skipped("everything", f"torch is not importable: {exc}")
        print_table()
        return 0
    cuda, providers = False, ()
    with guarded("environment"):
        cuda, providers = check_environment()
    check_training(cuda, args.batch, args.cpu_steps, args.gpu_steps)
    import torch.distributed as dist

    if not dist.is_available():
        skipped("DDP", "this torch build has no torch.distributed")
    else:
        if cuda and dist.is_nccl_available():
            check_ddp("nccl", "cuda", args.batch, args.gpu_steps)
        else:
            skipped("DDP nccl", "no CUDA device" if not cuda else "this torch build has no nccl")
        if dist.is_gloo_available():
            check_ddp("gloo", "cpu", args.batch, args.cpu_steps)
        else:
            skipped("DDP gloo", "this torch build has no gloo")
    with guarded("factory trainer"):
        check_factory_trainer(cuda)
    check_serving(cuda, providers, args.batch, args.serve_seconds)
    print_table()
    took = time.perf_counter() - started
    print(f"\n{took:.1f} s in all; torch {torch.__version__}, python {sys.version.split()[0]}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in ROWS], indent=2))
    return 1 if any(r.status == "FAILED" for r in ROWS) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
