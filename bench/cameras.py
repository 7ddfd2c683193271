"""Per-camera torch models: ``modelfab produce`` vs a plain PyTorch loop, run by hand (never in tests).

python bench/cameras.py                          # 200 cameras x 300 images of 32x32, 2 workers
python bench/cameras.py --cameras 40 --images 200 --workers 2 --epochs 3

Both sides decode the same PNGs, hold out the same share, train the same small CNN for the same epochs
with Adam, export it to ONNX with a dynamic batch axis and check it on the holdout with ONNX Runtime,
one camera per job on a fork process pool of the same size. modelfab also searches nothing (one trial),
evaluates, gates, keeps the weights and registers every version. Prints both wall times, the ratio
(target <= 1.15) and models/min.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SIZE = 32
CHANNELS = 8
DEPTH = 2
BATCH = 32
LR = 0.01


def camera_frame(cameras: int, images: int, seed: int = 0) -> pd.DataFrame:
    try:
        from modelfab.demo.synth import camera_frame as synth  # type: ignore[attr-defined]

        frame: pd.DataFrame = synth(cameras=cameras, images_per_camera=images, size=SIZE, seed=seed)
        return frame
    except ImportError:
        pass
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for c in range(cameras):
        background = rng.integers(20, 140, size=3)
        for i in range(images):
            label = "bike" if i % 2 else "empty"
            img = np.clip(background + rng.normal(0, 14, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            if label == "bike":
                y, x = rng.integers(0, SIZE - 10, size=2)
                img[y : y + 10, x : x + 10] = 230
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            rows.append({"camera": f"cam-{c:03d}", "label": label, "image": buf.getvalue()})
    return pd.DataFrame(rows)


RECIPE = f"""name: cams
task: image_classification
dataset: cams
target: label
partition_by: camera
seed: 0
candidates:
  - family: cnn
    params: {{epochs: EPOCHS, batch_size: {BATCH}, channels: {CHANNELS}, depth: {DEPTH}, lr: {LR}}}
metric: accuracy
min_rows: 20
"""


def run_modelfab(frame: pd.DataFrame, workers: int, epochs: int) -> tuple[float, int]:
    from modelfab.data.datasets import _store
    from modelfab.factory import produce
    from modelfab.recipe import parse_recipe
    from modelfab.settings import Settings
    from modelfab.store import Workspace

    with tempfile.TemporaryDirectory() as home:
        ws = Workspace.open(Settings(home=Path(home)))
        _store(ws, "cams", frame, "bench")
        started = time.perf_counter()
        report = produce(ws, parse_recipe(RECIPE.replace("EPOCHS", str(epochs))), workers=workers)
        seconds = time.perf_counter() - started
        if report.failed:
            print(f"modelfab failures: {report.failures[:3]}", file=sys.stderr)
        return seconds, report.trained


# The plain loop: what a user would write by hand, sharing nothing with modelfab's code.
_JOBS: dict[str, Any] = {}


def _plain_net() -> Any:
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            last = 3
            for i in range(DEPTH):
                width = CHANNELS * 2**i
                layers += [nn.Conv2d(last, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                if i < DEPTH - 1:
                    layers.append(nn.MaxPool2d(2))
                last = width
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, 2)]
            self.layers = nn.Sequential(*layers)

        def forward(self, x: Any) -> Any:
            x = (x.float().permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
            return self.layers(x)

    return Net()


def _plain_job(camera: str) -> int:
    import warnings

    import onnxruntime as ort
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    torch.manual_seed(0)
    blobs, labels = _JOBS[camera]
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    y = (np.asarray(labels) == "bike").astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    cut = len(y) // 5
    hold, train = order[:cut], order[cut:]
    net = _plain_net()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(_JOBS["epochs"]):
        net.train()
        perm = rng.permutation(train)
        for s in range(0, len(perm), BATCH):
            idx = perm[s : s + BATCH]
            loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        want = torch.softmax(net(xt[hold]), dim=1).numpy()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (xt[:2],),
            buf,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # one job per core, as modelfab's
    sess = ort.InferenceSession(buf.getvalue(), sess_options=opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x[hold]})[0]
    got = np.exp(got) / np.exp(got).sum(axis=1, keepdims=True)
    assert np.abs(got - want).max() < 5e-3
    out = Path(_JOBS["out"]) / f"{camera}.onnx"
    out.write_bytes(buf.getvalue())
    return len(buf.getvalue())


def run_plain(frame: pd.DataFrame, workers: int, epochs: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as out:
        _JOBS.clear()
        _JOBS.update({"epochs": epochs, "out": out})
        for camera, group in frame.groupby("camera"):
            _JOBS[str(camera)] = (list(group["image"]), list(group["label"]))
        cameras = sorted(str(c) for c in frame["camera"].unique())
        started = time.perf_counter()
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            done = sum(1 for _ in pool.map(_plain_job, cameras))
        return time.perf_counter() - started, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=200)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    frame = camera_frame(args.cameras, args.images)
    # Both sides train the same cameras: the generator's too-small and one-class ones are left out here
    # (modelfab would record them as failed in milliseconds; the plain loop has no such check).
    sizes = frame.groupby("camera")["label"].agg(["size", "nunique"])
    trainable = sizes[(sizes["size"] >= 20) & (sizes["nunique"] >= 2)].index
    frame = frame[frame["camera"].isin(trainable)].reset_index(drop=True)
    print(
        f"{len(trainable)} cameras x ~{args.images} images {SIZE}x{SIZE}, "
        f"{args.workers} workers, {args.epochs} epochs"
    )
    # Both sides fork their workers from a parent that has imported torch, its optimizers' dynamo hooks,
    # the ONNX exporter and ONNX Runtime (produce does this itself; a careful hand-written loop would
    # too), and neither is timed importing them: the ratio is the factory's own overhead.
    from modelfab.factory.torch_job import warm_imports

    warm_imports()
    plain_s, plain_n = run_plain(frame, args.workers, args.epochs)
    print(f"plain PyTorch loop: {plain_s:7.1f} s  {plain_n} models  {60 * plain_n / plain_s:6.1f} models/min")
    fab_s, fab_n = run_modelfab(frame, args.workers, args.epochs)
    print(f"modelfab produce:   {fab_s:7.1f} s  {fab_n} models  {60 * fab_n / fab_s:6.1f} models/min")
    print(f"ratio modelfab/plain: {fab_s / plain_s:.2f} (target <= 1.15)")


if __name__ == "__main__":
    main()
