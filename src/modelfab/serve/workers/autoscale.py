"""Worker autoscaling: a pure policy function over load samples, and a small stateful controller.

A load sample is the mean number of requests in flight (queued or running) per worker. Sustained queueing
adds workers, up to the core count; sustained idleness removes one at a time, down to the minimum.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Autoscaler", "ScalePolicy", "desired_workers", "worker_budget"]


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    min_workers: int = 1
    max_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    target_inflight: float = 4.0  # per worker; more than this, sustained, is queueing
    idle_inflight: float = 0.5  # per worker; less than this, sustained, is idle
    up_samples: int = 3  # consecutive samples over target before adding workers
    down_samples: int = 30  # consecutive samples under idle before removing one


def desired_workers(current: int, samples: Sequence[float], policy: ScalePolicy) -> int:
    """The worker count the recent ``samples`` (oldest first, one per interval) call for."""
    lo, hi = policy.min_workers, max(policy.min_workers, policy.max_workers)
    current = min(max(current, lo), hi)
    if len(samples) >= policy.up_samples:
        recent = samples[-policy.up_samples :]
        if min(recent) > policy.target_inflight:
            # enough workers that the mean load per worker would fall back to the target
            mean = sum(recent) / len(recent)
            want = math.ceil(current * mean / policy.target_inflight)
            return min(hi, max(current + 1, want))
    if len(samples) >= policy.down_samples:
        recent = samples[-policy.down_samples :]
        if max(recent) < policy.idle_inflight and current > lo:
            return current - 1
    return current


def worker_budget(total_bytes: int, running: int) -> int:
    """Each worker's share of the server's model memory: divided by the workers running now, not by the
    most there could be, so one worker of an idle server may use all of it."""
    return total_bytes // max(running, 1)


class Autoscaler:
    """Feeds samples to :func:`desired_workers`; after a change it forgets history so one burst acts once."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self._samples: deque[float] = deque(maxlen=max(policy.up_samples, policy.down_samples))

    def observe(self, current: int, inflight_total: float) -> int:
        self._samples.append(inflight_total / max(current, 1))
        want = desired_workers(current, list(self._samples), self.policy)
        if want != current:
            self._samples.clear()
        return want
