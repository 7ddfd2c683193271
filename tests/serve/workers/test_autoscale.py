"""Autoscaling policy as tables of numbers."""

from __future__ import annotations

import itertools

import pytest

from modelfab.serve.workers.autoscale import Autoscaler, ScalePolicy, desired_workers

P = ScalePolicy(
    min_workers=1, max_workers=8, target_inflight=4, idle_inflight=0.5, up_samples=3, down_samples=5
)


@pytest.mark.parametrize(
    ("current", "samples", "expected"),
    [
        (1, [], 1),
        (1, [10, 10], 1),  # not sustained yet
        (1, [5, 5, 5], 2),  # just over target: one more
        (2, [16, 16, 16], 8),  # 2 workers at 16 each -> 32 in flight -> 8 workers at 4
        (4, [40, 40, 40], 8),  # capped at max
        (8, [40, 40, 40], 8),
        (2, [10, 2, 10], 2),  # a dip breaks "sustained"
        (3, [0, 0, 0, 0, 0], 2),  # idle: remove one
        (1, [0, 0, 0, 0, 0], 1),  # never below min
        (3, [0, 0, 0, 1, 0], 3),  # not idle throughout
        (3, [2, 2, 2, 2, 2], 3),  # between idle and target: hold
        (0, [], 1),  # below min is corrected
        (12, [], 8),  # above max is corrected
    ],
)
def test_desired_workers(current: int, samples: list[float], expected: int) -> None:
    assert desired_workers(current, samples, P) == expected


def test_controller_acts_once_per_burst() -> None:
    scaler = Autoscaler(P)
    workers = 1
    decisions = []
    for total in [20, 20, 20, 20, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]:
        new = scaler.observe(workers, total)
        decisions.append(new)
        workers = new
    assert decisions[:3] == [1, 1, 5]  # third sustained sample scales 1 -> 5 (20 in flight / 4)
    assert decisions[3:5] == [5, 5]  # history was reset; 20/5 = 4 is not over target
    assert decisions[-1] < 5  # then idleness brings it down, one at a time
    assert all(b - a >= -1 for a, b in itertools.pairwise(decisions))
