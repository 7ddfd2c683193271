"""One rank of a data-parallel job: resume from the newest checkpoint, train, checkpoint, report.

Started as ``python -m modelfab.factory.distributed.rank JOB_DIR`` under torch's elastic agent (which sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT and TORCHELASTIC_RESTART_COUNT), or called by Ray Train's
TorchTrainer with the process group already up. Everything a rank does is a function of (seed, step, rank),
so a resumed job repeats the steps it lost exactly.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from modelfab.factory.distributed.checkpoints import AsyncCheckpointer
from modelfab.factory.distributed.spec import lr_at

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from modelfab.factory.distributed.spec import DistributedSpec

FAULT_ENV = "MODELFAB_DDP_FAULT"
"""Test hook: ``RANK:STEP:MARKER`` makes that rank SIGKILL itself after that step, once (the marker file
records that it happened)."""

# progress.npy slots, written by rank 0 only
_DONE, _LAST_STEP_AT, _REDONE, _RESTART_S, _ATTEMPTS, _LOOP_S, _SAMPLES = range(7)
PROGRESS_SLOTS = 7


def run_job(job_dir: Path, *, rank: int, world_size: int, local_rank: int, init_process_group: bool) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    job = pickle.loads((job_dir / "job.pkl").read_bytes())
    spec: DistributedSpec = job["spec"]
    seed: int = job["seed"]
    torch.set_num_threads(spec.threads_per_worker)
    cuda = spec.gpus > 0 and torch.cuda.is_available()
    # one GPU per rank (NCCL refuses two ranks on one device): spec.workers should not exceed the GPUs
    device = torch.device(f"cuda:{local_rank % torch.cuda.device_count()}" if cuda else "cpu")
    if init_process_group:
        _init_group("nccl" if cuda else "gloo", rank, world_size)
    x = np.load(job_dir / "x.npy", mmap_mode="r")
    y = np.load(job_dir / "y.npy", mmap_mode="r")
    progress = np.lib.format.open_memmap(job_dir / "progress.npy", mode="r+")

    torch.manual_seed(seed)
    module = job["build_model"]().to(device)
    module.train()
    model = DistributedDataParallel(module, device_ids=[device.index] if cuda else None)
    optimizer = _optimizer(spec, model.parameters())
    sampler: DistributedSampler[int] = DistributedSampler(
        cast("Dataset[int]", _Indices(len(y))), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
    )
    per_epoch = math.ceil(len(sampler) / spec.batch_size)
    total = spec.epochs * per_epoch

    step = 0
    latest = job["store"].latest()
    if latest is not None:
        ckpt, blob = latest
        import io

        state = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = ckpt.step
    if rank == 0:
        progress[_ATTEMPTS] += 1
        if progress[_ATTEMPTS] > 1:  # a restart: count the work thrown away and the time it took to get back
            progress[_REDONE] += max(0.0, progress[_DONE] - step)
            progress[_RESTART_S] += time.time() - progress[_LAST_STEP_AT]
            with open(job_dir / "resumes.txt", "a") as fh:
                fh.write(f"{step}\n")
        progress.flush()

    checkpointer = AsyncCheckpointer(job["store"], spec.keep_checkpoints) if rank == 0 else None
    fault = _fault(rank)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses: list[float] = []
    loop_start = time.perf_counter()
    samples = 0
    while step < total:
        epoch, first = divmod(step, per_epoch)
        sampler.set_epoch(epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64)
        losses = []
        for batch in range(first, per_epoch):
            idx = order[batch * spec.batch_size : (batch + 1) * spec.batch_size]
            inputs = _inputs(np.asarray(x[np.sort(idx)]), spec, seed, step, rank).to(device)
            targets = torch.from_numpy(np.asarray(y[np.sort(idx)], dtype=np.int64)).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(spec.lr, spec.lr_schedule, step, total)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            step += 1
            samples += len(idx) * world_size
            losses.append(float(loss.detach()))
            if fault is not None and step == fault[0]:
                fault[1].touch()
                os.kill(os.getpid(), signal.SIGKILL)
            if checkpointer is not None:
                if step % spec.checkpoint_every == 0 and step < total:
                    state = {"model": module.state_dict(), "optimizer": optimizer.state_dict()}
                    checkpointer.submit(state, step=step, epoch=step // per_epoch, batch=step % per_epoch)
                progress[_DONE] = step
                progress[_LAST_STEP_AT] = time.time()

    loop_seconds = time.perf_counter() - loop_start
    if checkpointer is not None:
        checkpointer.close()
        progress[_LOOP_S] += loop_seconds
        progress[_SAMPLES] += samples
        progress.flush()
        torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, job_dir / "final.pt.tmp")
        os.replace(job_dir / "final.pt.tmp", job_dir / "final.pt")
        report = {
            "steps": step,
            "epochs": spec.epochs,
            "checkpoints": checkpointer.written,
            "checkpoint_stall_seconds": checkpointer.stall_seconds,
            "final_loss": float(np.mean(losses)) if losses else float("nan"),
            "restarts_env": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "-1")),
        }
        (job_dir / "report.json").write_text(json.dumps(report))
    dist.barrier()
    if init_process_group:
        dist.destroy_process_group()


def _init_group(backend: str, rank: int, world_size: int) -> None:
    """Join the process group through the agent's store, under a prefix per attempt: the agent keeps one
    store across restarts, and without the prefix a restarted rank can read the listening address of a
    rank that died with the previous attempt (gloo then fails with 'connection refused')."""
    import torch.distributed as dist
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # exported, not in stubs' __all__
    from torch.distributed.distributed_c10d import PrefixStore

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend)
        return
    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = PrefixStore(f"modelfab/attempt-{attempt}/", store)
    dist.init_process_group(backend, store=prefixed, rank=rank, world_size=world_size)


class _Indices:
    """A stand-in dataset: DistributedSampler only needs its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _optimizer(spec: DistributedSpec, params: Any) -> torch.optim.Optimizer:
    import torch

    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=0.9)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr)
    return torch.optim.Adam(params, lr=spec.lr)


def _inputs(batch: np.ndarray, spec: DistributedSpec, seed: int, step: int, rank: int) -> torch.Tensor:
    """The batch as the model takes it, augmented with randomness drawn from (seed, step, rank) only."""
    import torch

    if spec.augment and batch.ndim == 4:
        rng = np.random.default_rng((seed, step, rank))
        batch = batch.copy()
        if "flip" in spec.augment:
            flip = rng.random(len(batch)) < 0.5
            batch[flip] = batch[flip, :, ::-1]
        if "crop" in spec.augment:  # a random window of the image padded by 1/8 of its side, edges repeated
            h, w = batch.shape[1:3]
            pad = max(1, h // 8)
            padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
            offsets = rng.integers(0, 2 * pad + 1, size=(len(batch), 2))
            batch = np.stack([padded[i, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
        if "color" in spec.augment and batch.dtype == np.uint8:
            gain = rng.uniform(0.8, 1.2, size=(len(batch), 1, 1, 1))
            batch = np.clip(batch * gain, 0, 255).astype(np.uint8)
    tensor = torch.from_numpy(np.ascontiguousarray(batch))
    if spec.preprocess == "scale":
        tensor = tensor.permute(0, 3, 1, 2).float().div(255.0)
    return tensor


def _fault(rank: int) -> tuple[int, Path] | None:
    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return None
    want, step, marker = raw.split(":", 2)
    if int(want) != rank or Path(marker).exists():
        return None
    return int(step), Path(marker)
