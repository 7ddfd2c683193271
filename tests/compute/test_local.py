"""The local process pool survives its workers dying: the pool is rebuilt and the lost jobs run again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from modelfab.compute.base import WorkerLost
from modelfab.compute.local import LocalExecutor


def square_or_die(n: int, marker: Path | None, always: bool) -> int:
    """Squares ``n``; with a marker, kills its own worker process: once (leaving the marker), or always."""
    if marker is not None and (always or not marker.exists()):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return n * n


def run_all(executor: LocalExecutor, items: list[tuple[object, ...]]) -> dict[int, object]:
    try:
        return {args[0]: result for args, result in executor.run_unordered(square_or_die, items)}
    finally:
        executor.shutdown()


def test_a_worker_killed_once_costs_a_rerun_not_the_run(tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    items: list[tuple[object, ...]] = [(n, None, False) for n in range(8)]
    items[3] = (3, marker, False)
    results = run_all(LocalExecutor(workers=2), items)
    assert marker.exists(), "the job never killed its worker"
    assert results == {n: n * n for n in range(8)}


def test_a_job_that_always_kills_its_worker_fails_alone(tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    items: list[tuple[object, ...]] = [(n, None, False) for n in range(6)]
    items[2] = (2, marker, True)
    results = run_all(LocalExecutor(workers=2, max_worker_deaths=2), items)
    lost = results.pop(2)
    assert isinstance(lost, WorkerLost) and "died 3 times" in str(lost) and "--retry-failed" in str(lost)
    assert results == {n: n * n for n in range(6) if n != 2}
