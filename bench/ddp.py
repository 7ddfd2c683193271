"""Distributed data parallel benchmark, run by hand (never in tests). Figures are ratios measured in one run.

python bench/ddp.py            # 2 workers vs 1, checkpoint overhead, a killed worker, Ray Train side by side
python bench/ddp.py --no-ray   # without the Ray Train comparison

Every run trains the same small CNN (32x32 RGB, three conv layers: compute dominates the allreduce of its
~60k parameters) on the same synthetic images with one thread per worker and the same per-worker batch, so
2 workers see twice the samples per step. Throughput is samples/s inside the training loop (process start,
rendezvous and data loading excluded); wall times include them. Runs are interleaved and repeated, and each
figure takes the best of its repeats, because the machine is shared and a single run swings by +-30%.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

IMAGES = 2048
SIZE = 32
BATCH = 32
REPEAT = 3
REPEAT_RAY = 2


def build() -> Any:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(64, 64, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(64, 4),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x.permute(0, 3, 1, 2).float().div(255.0))

    return Net()


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, IMAGES)
    x = rng.integers(0, 160, size=(IMAGES, SIZE, SIZE, 3)).astype(np.uint8)
    for c in range(3):
        x[labels == c, :, :, c] += 90
    return x, labels.astype(np.int64)


def run(name: str, root: Path, fault: str | None = None, **spec: Any) -> dict[str, float]:
    from modelfab.factory.distributed import DistributedSpec, train_distributed
    from modelfab.factory.distributed.worker import FAULT_ENV

    x, y = data()
    if fault:
        os.environ[FAULT_ENV] = fault
    start = time.perf_counter()
    try:
        result = train_distributed(
            build, x, y, DistributedSpec(batch_size=BATCH, **spec), root / name, seed=0
        )
    finally:
        os.environ.pop(FAULT_ENV, None)
    wall = time.perf_counter() - start
    step = result.train_seconds / max(1, result.steps)
    print(
        f"{name:>16}: {result.samples_per_second:7.1f} samples/s, {result.steps} steps of"
        f" {step * 1000:.1f} ms, wall {wall:.1f} s, checkpoints {result.checkpoints}"
        f" (stall {result.checkpoint_stall_seconds:.3f} s), restarts {result.restarts},"
        f" redone {result.steps_redone} steps, restart {result.restart_seconds:.1f} s"
    )
    return {
        "sps": result.samples_per_second,
        "wall": wall,
        "loop": result.train_seconds,
        "step": step,
        "stall": result.checkpoint_stall_seconds,
        "redone": result.steps_redone,
        "restart": result.restart_seconds,
        "restarts": result.restarts,
    }


def _plain_loop(config: dict[str, Any]) -> None:
    # What a Ray Train user writes: a DataLoader over tensors, prepare_data_loader, prepare_model.
    import ray.train
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.from_numpy(np.load(config["x"]))
    y = torch.from_numpy(np.load(config["y"]))
    loader = ray.train.torch.prepare_data_loader(
        DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    )
    model = ray.train.torch.prepare_model(build())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    world = ray.train.get_context().get_world_size()
    samples, start = 0, time.perf_counter()
    for epoch in range(config["epochs"]):
        if world > 1:
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
            samples += len(xb) * world
    if ray.train.get_context().get_world_rank() == 0:  # Ray Train keeps no metrics without a checkpoint
        Path(config["out"]).write_text(str(samples / (time.perf_counter() - start)))


def plain_ray_train(root: Path, workers: int, epochs: int) -> dict[str, float]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    x, y = data()
    np.save(root / "x.npy", x)
    np.save(root / "y.npy", y)
    start = time.perf_counter()
    path = os.pathsep.join(p for p in sys.path if p)  # so the workers import this module as the driver does
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        trainer = TorchTrainer(
            _plain_loop,
            train_loop_config={
                "x": str(root / "x.npy"),
                "y": str(root / "y.npy"),
                "epochs": epochs,
                "out": str(root / "plain-sps"),
            },
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(storage_path=str(root / "ray-plain")),
        )
        trainer.fit()
        sps = float((root / "plain-sps").read_text())
    finally:
        ray.shutdown()
    wall = time.perf_counter() - start
    print(f"{'plain Ray Train':>16}: {sps:7.1f} samples/s, wall {wall:.1f} s")
    return {"sps": sps, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    print(f"{IMAGES} images {SIZE}x{SIZE}, batch {BATCH} per worker, 1 thread/worker, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        never = 10**9
        # the machine is shared: interleave the runs and keep each one's best
        runs: dict[str, list[dict[str, float]]] = {"one": [], "two": [], "ckpt": []}
        for i in range(REPEAT):  # a store each: the same job in the same store would resume, not rerun
            runs["one"].append(run("1 worker", root / str(i), workers=1, epochs=1, checkpoint_every=never))
            runs["two"].append(run("2 workers", root / str(i), workers=2, epochs=2, checkpoint_every=never))
            runs["ckpt"].append(run("2 w + ckpt/8", root / str(i), workers=2, epochs=2, checkpoint_every=8))
        one, two, ckpt = (max(r, key=lambda m: m["sps"]) for r in runs.values())
        kill_at = 8 * 3 + 6  # 6 steps after the third checkpoint
        killed = run(
            "2 w + kill",
            root,
            fault=f"1:{kill_at}:{root / 'killed'}",
            workers=2,
            epochs=2,
            checkpoint_every=8,
        )
        ray = plain = ours = None
        if not args.no_ray:
            try:
                import ray.train.torch
            except ImportError:
                print("Ray Train is not importable: no side by side")
            else:
                rays, plains = [], []
                for i in range(REPEAT_RAY):
                    (root / f"plain{i}").mkdir()
                    plains.append(plain_ray_train(root / f"plain{i}", workers=2, epochs=2))
                    spec = {"workers": 2, "epochs": 2, "checkpoint_every": 8}
                    rays.append(run("2 w on Ray", root / f"ray{i}", executor="ray", **spec))
                    runs["ckpt"].append(run("2 w + ckpt/8", root / f"ray{i}", **spec))
                ray, plain = (max(r, key=lambda m: m["sps"]) for r in (rays, plains))
                ours = max(runs["ckpt"][REPEAT:], key=lambda m: m["sps"])

    print()
    print(f"2 workers vs 1: {two['sps'] / one['sps']:.2f}x samples/s (target >= 1.6)")
    overhead = (ckpt["step"] - two["step"]) / two["step"]
    print(
        f"checkpoint every 8 steps: step time {overhead:+.1%} vs none; training thread stalled "
        f"{ckpt['stall'] / ckpt['loop']:.2%} of loop time (target <= 5%)"
    )
    lost = killed["wall"] - ckpt["wall"]
    expected = killed["redone"] * ckpt["step"] + killed["restart"]
    print(
        f"killed worker: +{lost:.1f} s wall; {killed['redone']:.0f} steps redone"
        f" ({killed['redone'] * ckpt['step']:.1f} s) + restart {killed['restart']:.1f} s = {expected:.1f} s;"
        f" restarts {killed['restarts']:.0f}"
    )
    if ray is not None and plain is not None and ours is not None:
        print(
            f"vs a plain Ray Train TorchTrainer loop (DataLoader, prepare_model, no checkpoints):"
            f" {ours['sps'] / plain['sps']:.2f}x step throughput (target >= 1.0),"
            f" wall {ours['wall']:.1f} s vs {plain['wall']:.1f} s"
        )
        print(
            f"our ranks under Ray Train vs under torch's elastic agent: {ray['sps'] / ours['sps']:.2f}x"
            " throughput,"
            f" wall {ray['wall']:.1f} s vs {ours['wall']:.1f} s"
        )


if __name__ == "__main__":
    import ddp  # run the module's own copy, so the ranks can import `build` by its module name

    ddp.main()
