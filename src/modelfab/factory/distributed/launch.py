"""Start a data-parallel job: N local ranks under torch's elastic agent, or Ray Train's TorchTrainer."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfab.errors import TrainingError
from modelfab.factory.distributed.checkpoints import CheckpointStore
from modelfab.factory.distributed.spec import DistributedResult, DistributedSpec
from modelfab.factory.distributed.worker import PROGRESS_SLOTS

if TYPE_CHECKING:
    import torch

__all__ = ["train_distributed"]


def train_distributed(
    build_model: Callable[[], torch.nn.Module],
    images: np.ndarray,
    labels: np.ndarray,
    spec: DistributedSpec,
    store: CheckpointStore | str | Path,
    seed: int = 0,
) -> DistributedResult:
    """Train ``build_model()`` on all of ``images``/``labels`` with ``spec.workers`` data-parallel ranks.

    ``build_model`` must be picklable (a module-level function or a ``functools.partial`` of one); the data
    reach the ranks through memory-mapped .npy files. Rank 0 checkpoints every ``spec.checkpoint_every``
    steps into ``store``; a failed rank makes the agent restart the group (up to ``spec.max_restarts``
    times) from the newest checkpoint that verifies. Checkpoints live under a subfolder named after the job
    (model builder, data, spec, seed): calling again with the same job resumes it from there.
    """
    if len(images) != len(labels) or len(labels) == 0:
        raise TrainingError(
            f"distributed training needs as many labels as images (and some), got {len(images)}/{len(labels)}"
        )
    target = getattr(build_model, "func", build_model)
    if getattr(target, "__module__", None) == "__main__":
        raise TrainingError(
            "build_model is defined in __main__, which the ranks cannot import: move it to a module "
            "(or pass a functools.partial of a module-level function)"
        )
    checkpoints = store if isinstance(store, CheckpointStore) else CheckpointStore(store)
    checkpoints = checkpoints.scoped(_job_key(build_model, images, labels, spec, seed))
    job_dir = Path(tempfile.mkdtemp(prefix="modelfab-ddp-"))
    try:
        np.save(job_dir / "x.npy", np.ascontiguousarray(images))
        np.save(job_dir / "y.npy", np.ascontiguousarray(labels, dtype=np.int64))
        np.save(job_dir / "progress.npy", np.zeros(PROGRESS_SLOTS, dtype=np.float64))
        job = {"build_model": build_model, "spec": spec, "store": checkpoints, "seed": seed}
        (job_dir / "job.pkl").write_bytes(pickle.dumps(job))
        (job_dir / "sys_path.json").write_text(json.dumps([p for p in sys.path if p]))
        if spec.executor == "ray":
            from modelfab.factory.distributed.ray import run_ray

            run_ray(job_dir, spec)
        else:
            _run_elastic(job_dir, spec)
        return _result(job_dir)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _job_key(
    build_model: Any, images: np.ndarray, labels: np.ndarray, spec: DistributedSpec, seed: int
) -> str:
    """What makes checkpoints of one job usable by another: same model builder, data, spec and seed."""
    h = hashlib.sha256()
    h.update(pickle.dumps((build_model, spec, seed, images.shape, str(images.dtype))))
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels, dtype=np.int64).data)
    return h.hexdigest()[:16]


def _run_elastic(job_dir: Path, spec: DistributedSpec) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=spec.workers,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=spec.max_restarts,
        monitor_interval=0.1,
    )
    # A command, not a function: the agent then starts ranks with Popen, which also works from a daemonic
    # process-pool worker (multiprocessing refuses children there).
    entry = [sys.executable, "-m", "modelfab.factory.distributed.rank", str(job_dir)]
    # The agent turns these signals into exceptions and leaves its handlers installed: put the caller's
    # back, or a process-pool worker that ran a job dies with a traceback when its pool shuts it down.
    handled = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]
    saved = {sig: signal.getsignal(sig) for sig in handled}
    try:
        elastic_launch(config, entry[0])(*entry[1:])
    except ChildFailedError as exc:
        raise TrainingError(
            f"distributed training failed after {spec.max_restarts} restarts: {exc}"
        ) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if handler is not None:  # None: installed outside Python, nothing to put back
                    signal.signal(sig, handler)


def _result(job_dir: Path) -> DistributedResult:
    import torch

    report: dict[str, Any] = json.loads((job_dir / "report.json").read_text())
    progress = np.load(job_dir / "progress.npy")
    resumes = job_dir / "resumes.txt"
    resumed_from = [int(v) for v in resumes.read_text().split()] if resumes.exists() else []
    loop_s = float(progress[5])
    return DistributedResult(
        state_dict=torch.load(job_dir / "final.pt", weights_only=True),
        steps=int(report["steps"]),
        epochs=int(report["epochs"]),
        restarts=max(int(progress[4]) - 1, int(report["restarts_env"])),
        steps_redone=int(progress[2]),
        samples_per_second=float(progress[6]) / loop_s if loop_s > 0 else 0.0,
        train_seconds=loop_s,
        checkpoints=int(report["checkpoints"]),
        checkpoint_stall_seconds=float(report["checkpoint_stall_seconds"]),
        restart_seconds=float(progress[3]),
        final_loss=float(report["final_loss"]),
        resumed_from=resumed_from,
    )
