"""The camera story: one "bike parked here" model per camera, adapted from a base trained on every camera.

Generate camera-like images (:func:`modelfab.demo.synth.camera_frame`), import them as a folder tree,
train one global CNN on all cameras, fine-tune it per camera, compare both on images neither has seen,
then serve the camera models and send raw ``UINT8`` pixels through the unmodified ``tritonclient``.
Runs on the CPU in a few minutes; ``modelfab quickstart --story cameras`` calls :func:`run_camera_demo`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from modelfab.store import Workspace

__all__ = ["CameraReport", "camera_recipes", "run_camera_demo"]

_TRAIN = "epochs: {epochs}, batch_size: 32, channels: 16, depth: 2, lr: 0.005, augment: [color]"


def camera_recipes(epochs: int = 4, finetune_epochs: int = 3) -> tuple[str, str]:
    """The global recipe (one model on every camera) and the per-camera one adapted from it."""
    common = (
        "task: image_classification\ndataset: cameras\ntarget: label\nimage: image\nseed: 11\n"
        "metric: accuracy\nsplit: {holdout: 0.2}\n"
    )
    base = (
        f"name: cameras-global\n{common}"
        f"candidates:\n  - family: cnn\n    params: {{{_TRAIN.format(epochs=epochs)}}}\nmin_rows: 50\n"
    )
    per_camera = (
        f"name: cameras\n{common}partition_by: camera\nmin_rows: 40\n"
        f"candidates:\n  - family: cnn\n    params: {{{_TRAIN.format(epochs=finetune_epochs)}}}\n"
        "base: {model: cameras-global.all@champion, finetune: all}\n"
    )
    return base, per_camera


@dataclass
class CameraReport:
    cameras: int = 0
    trained: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    global_accuracy: dict[str, float] = field(default_factory=dict)
    camera_accuracy: dict[str, float] = field(default_factory=dict)
    models_per_minute: float = 0.0
    served: int = 0
    served_agree: int = 0
    served_models: int = 0
    shared_sessions: float | None = None  # from the server's /metrics

    @property
    def median_gain(self) -> float:
        gains = [self.camera_accuracy[c] - self.global_accuracy[c] for c in self.camera_accuracy]
        return statistics.median(gains) if gains else float("nan")

    def lines(self) -> list[str]:
        out = [
            f"{self.trained} camera models adapted from the global one "
            f"({self.models_per_minute:,.0f} models/min); skipped: "
            + (", ".join(f"{c} ({why})" for c, why in sorted(self.skipped.items())) or "none"),
            "accuracy on unseen images, global model -> the camera's own:",
        ]
        for cam in sorted(self.camera_accuracy):
            out.append(f"  {cam}: {self.global_accuracy[cam]:.3f} -> {self.camera_accuracy[cam]:.3f}")
        out.append(f"median gain {self.median_gain:+.3f}")
        if self.served:
            out.append(
                f"served {self.served} raw UINT8 images through tritonclient; {self.served_agree} answers "
                "equal ONNX Runtime's on the registered graph"
            )
            if self.shared_sessions is not None:
                out.append(
                    f"{self.served_models} camera models ran on {self.shared_sessions:g} shared ONNX Runtime "
                    "session(s): loading one more is a weights fetch, not a session build"
                )
        return out


def _split_unseen(frame: pd.DataFrame, unseen: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The last ``unseen`` images of each camera are kept out of the dataset, to judge both models."""
    last = frame.groupby("camera").cumcount(ascending=False) < unseen
    return frame[~last].reset_index(drop=True), frame[last].reset_index(drop=True)


def _predict(ws: Workspace, name: str, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    mv = ws.registry.get_version(name)
    session = ort.InferenceSession(ws.artifacts.get(mv.artifact_digest), providers=["CPUExecutionProvider"])
    label, _ = session.run(None, {"image": images})
    return np.asarray(label)


def run_camera_demo(
    ws: Workspace,
    *,
    cameras: int = 12,
    images_per_camera: int = 240,
    unseen: int = 40,
    size: int = 32,
    epochs: int = 4,
    finetune_epochs: int = 3,
    workers: int | None = None,
    serve: bool = True,
    port: int = 0,
    say: Callable[[str], None] = print,
) -> CameraReport:
    """The whole story on ``ws``; returns what it measured."""
    from modelfab.data import import_dataset
    from modelfab.data.images import decode_images
    from modelfab.demo.synth import camera_frame, write_camera_folder
    from modelfab.errors import NotFoundError
    from modelfab.factory import produce
    from modelfab.recipe import parse_recipe

    report = CameraReport(cameras=cameras)
    frame = camera_frame(cameras=cameras, images_per_camera=images_per_camera + unseen, size=size, seed=3)
    train, held = _split_unseen(frame, unseen)
    folder = Path(ws.settings.home) / "cameras" / "images"
    write_camera_folder(train, folder)
    version, _ = import_dataset(ws, "cameras", folder)
    say(f"imported {version.rows:,} images of {cameras} cameras as dataset {version.ref} (from {folder})")
    base_text, camera_text = camera_recipes(epochs, finetune_epochs)
    started = time.monotonic()
    produce(ws, parse_recipe(base_text), dataset=version, workers=workers)
    say(f"global model trained on every camera in {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    result = produce(ws, parse_recipe(camera_text), dataset=version, workers=workers)
    minutes = (time.monotonic() - started) / 60
    report.trained = result.passed
    report.models_per_minute = result.trained / minutes if minutes > 0 else 0.0
    report.skipped = {key: why.split(";")[0] for key, why in result.failures}
    for cam, rows in held.groupby("camera"):
        name = f"cameras.{cam}"
        if cam in report.skipped:
            continue
        try:
            ws.registry.get_version(name)
        except NotFoundError:  # failed the gate: no champion to judge
            continue
        images = decode_images(rows["image"].tolist())
        truth = rows["label"].to_numpy()
        report.global_accuracy[str(cam)] = float(np.mean(_predict(ws, "cameras-global.all", images) == truth))
        report.camera_accuracy[str(cam)] = float(np.mean(_predict(ws, name, images) == truth))
    if serve and report.camera_accuracy:
        _serve(ws, held, report, port)
    for line in report.lines():
        say(line)
    return report


def _serve(ws: Workspace, held: pd.DataFrame, report: CameraReport, port: int) -> None:
    """Raw pixels through tritonclient's binary tensors, answers checked against ONNX Runtime."""
    import tritonclient.http as httpclient

    from modelfab.data.images import decode_images
    from modelfab.demo.server import demo_server

    with demo_server(ws.settings.home, port, log_sample_rate=0.0) as url:
        client = httpclient.InferenceServerClient(url)
        try:
            for cam in sorted(report.camera_accuracy):
                images = decode_images(held[held["camera"] == cam]["image"].tolist())
                inp = httpclient.InferInput("image", list(images.shape), "UINT8")
                inp.set_data_from_numpy(images, binary_data=True)
                out = [httpclient.InferRequestedOutput("label", binary_data=True)]
                answer: Any = client.infer(f"cameras.{cam}", [inp], outputs=out)
                labels = [v.decode() if isinstance(v, bytes) else str(v) for v in answer.as_numpy("label")]
                expected = [str(v) for v in _predict(ws, f"cameras.{cam}", images)]
                report.served += len(labels)
                report.served_agree += sum(a == b for a, b in zip(labels, expected, strict=True))
                report.served_models += 1
        finally:
            client.close()
        report.shared_sessions = _gauge(url, "modelfab_shared_graphs")


def _gauge(url: str, name: str) -> float | None:
    """One unlabelled gauge from the server's /metrics (summed over workers), after its next upkeep."""
    import urllib.request

    for _ in range(30):  # housekeeping publishes the gauge about once a second
        with urllib.request.urlopen(f"http://{url}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " ") and float(line.split()[1]) > 0:
                return float(line.split()[1])
        time.sleep(0.2)
    return None
