"""Distributed data parallel for one large job, with fault-tolerant asynchronous checkpoints.

``train_distributed`` starts the ranks (torch's elastic agent locally, Ray Train on Ray), ``worker`` is
one rank's loop, ``checkpoints`` the digest-checked checkpoint store and its background writer.
"""

from __future__ import annotations

from modelfab.factory.distributed.checkpoints import AsyncCheckpointer, Checkpoint, CheckpointStore
from modelfab.factory.distributed.launch import train_distributed
from modelfab.factory.distributed.spec import DistributedResult, DistributedSpec, lr_at

__all__ = [
    "AsyncCheckpointer",
    "Checkpoint",
    "CheckpointStore",
    "DistributedResult",
    "DistributedSpec",
    "lr_at",
    "train_distributed",
]
