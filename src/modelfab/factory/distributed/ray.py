"""The same ranks under Ray Train's TorchTrainer: Ray starts the workers and the process group, restarts the
group on failure (``FailureConfig(max_failures=spec.max_restarts)``), and each rank runs ``worker.run_job``,
so checkpoints, resume and the result are the local path's."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from modelfab.errors import TrainingError
from modelfab.factory.distributed.spec import DistributedSpec

__all__ = ["run_ray"]


def run_ray(job_dir: Path, spec: DistributedSpec) -> None:
    try:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as exc:
        raise TrainingError(f"distributed.executor 'ray' needs ray[train] installed ({exc})") from None

    started = not ray.is_initialized()
    if started:
        # the ranks import the model builder, so they need the driver's import path
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}},
        )
    resources: dict[str, float] = {"CPU": spec.cpus_per_worker}
    if spec.gpus > 0:
        resources["GPU"] = spec.gpus / spec.workers
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"job_dir": str(job_dir)},
        scaling_config=ScalingConfig(
            num_workers=spec.workers, use_gpu=spec.gpus > 0, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if spec.gpus > 0 else "gloo"),
        run_config=RunConfig(
            name=job_dir.name,
            storage_path=str(job_dir / "ray"),
            failure_config=FailureConfig(max_failures=spec.max_restarts),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # Ray wraps the rank's error in its own types
        raise TrainingError(f"distributed training on Ray failed: {exc}") from exc
    finally:
        if started:  # a Ray we started for this job only
            ray.shutdown()


def _loop(config: dict[str, Any]) -> None:
    import ray.train

    from modelfab.factory.distributed.worker import run_job

    ctx = ray.train.get_context()
    run_job(
        Path(config["job_dir"]),
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        local_rank=ctx.get_local_rank(),
        init_process_group=False,
    )
