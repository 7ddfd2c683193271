"""What a distributed job is asked to do and what it reports back; the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DistributedResult", "DistributedSpec", "lr_at"]

Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine", "step"]


@dataclass(frozen=True)
class DistributedSpec:
    """One data-parallel job.

    ``preprocess`` says what the model is fed: ``"none"`` passes the array as it is (uint8 NHWC images
    for a model that carries its own preprocessing, as the exported graphs do), ``"scale"`` gives float NCHW
    in [0, 1].
    """

    workers: int = 2
    epochs: int = 1
    batch_size: int = 32
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    lr_schedule: Schedule = "constant"
    augment: tuple[str, ...] = ()
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_restarts: int = 3
    gpus: int = 0
    threads_per_worker: int = 1
    cpus_per_worker: float = 1.0
    executor: Literal["local", "ray"] = "local"
    preprocess: Literal["none", "scale"] = "none"

    def __post_init__(self) -> None:
        from modelfab.errors import RecipeError

        if self.workers < 1:
            raise RecipeError(f"distributed.workers must be at least 1, got {self.workers}")
        if self.epochs < 1 or self.batch_size < 1:
            raise RecipeError("distributed epochs and batch_size must be at least 1")
        if self.checkpoint_every < 1:
            raise RecipeError(f"distributed.checkpoint_every must be at least 1, got {self.checkpoint_every}")
        unknown = set(self.augment) - {"flip", "crop", "color"}
        if unknown:
            raise RecipeError(f"distributed.augment: unknown {sorted(unknown)}; use flip, crop, color")


@dataclass
class DistributedResult:
    """The trained weights (CPU tensors) and what it took to get them.

    ``steps_redone`` counts optimizer steps done twice because a failure threw away the work since the
    last checkpoint; ``restart_seconds`` is the time from the last step before a failure to the first step
    after it, summed over restarts.
    """

    state_dict: dict[str, Any]
    steps: int
    epochs: int
    restarts: int
    steps_redone: int
    samples_per_second: float
    train_seconds: float
    checkpoints: int
    checkpoint_stall_seconds: float
    restart_seconds: float
    final_loss: float
    resumed_from: list[int] = field(default_factory=list)


def lr_at(base: float, schedule: Schedule, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` of ``total``: a pure function of the step, so a resumed
    job follows the same curve without saving scheduler state."""
    if schedule == "constant" or total <= 1:
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    # "step": a tenth at each third of the run
    return base * 0.1 ** min(2, (3 * step) // total)
