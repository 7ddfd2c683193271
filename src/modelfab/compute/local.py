"""Local executor: a process pool sized to the machine's cores."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from modelfab.compute.base import WorkerLost

if TYPE_CHECKING:
    from modelfab.compute.base import Slots

__all__ = ["LocalExecutor", "SharedRef", "resolve"]

R = TypeVar("R")

# Objects every worker needs (a run's plan and data). Workers inherit them on fork, or receive them once
# through the pool initializer on spawn, instead of with every task.
_SHARED: dict[str, Any] = {}


@dataclass(frozen=True)
class SharedRef:
    key: str


def resolve(value: Any) -> Any:
    """The object behind a :class:`SharedRef`; anything else is returned as it is."""
    return _SHARED[value.key] if isinstance(value, SharedRef) else value


def _worker_init(shared: dict[str, Any] | None) -> None:
    # Ctrl-C goes to the whole process group; the driver decides how to stop, workers just finish or die.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Parallelism comes from the pool; threaded BLAS/OpenMP inside each worker would oversubscribe cores
    # (measured: 10x slower on 2 cores). The variables cover libraries loaded later, threadpoolctl
    # those the parent had already loaded before the fork.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    if shared:
        _SHARED.update(shared)


class LocalExecutor:
    """Process pool (fork on Linux, so workers inherit shared objects without pickling them)."""

    def __init__(
        self, workers: int | None = None, max_in_flight: int | None = None, max_worker_deaths: int = 2
    ) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.max_worker_deaths = max_worker_deaths
        # Bounded submission keeps memory flat with 100,000 jobs and lets a stop drop the queue quickly.
        self.max_in_flight = max_in_flight or self.workers * 4
        self._method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self._pool: ProcessPoolExecutor | None = None
        self._keys: list[str] = []
        self._closed = False

    def share(self, obj: Any) -> SharedRef:
        """A cheap handle for ``obj`` that tasks resolve with :func:`resolve` inside the workers."""
        key = uuid.uuid4().hex
        _SHARED[key] = obj
        self._keys.append(key)
        if self._pool is not None:  # workers started before this object existed: start fresh ones
            self._pool.shutdown(wait=True)
            self._pool = None
        return SharedRef(key)

    def _ensure_pool(self) -> ProcessPoolExecutor:
        assert not self._closed, "executor was shut down"
        if self._pool is None:
            shared = {k: _SHARED[k] for k in self._keys} if self._method == "spawn" else None
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context(self._method),
                initializer=_worker_init,
                initargs=(shared,),
            )
        return self._pool

    def run_unordered(
        self, fn: Callable[..., R], items: Iterable[tuple[Any, ...]], slots: Slots | None = None
    ) -> Iterator[tuple[tuple[Any, ...], R | BaseException]]:
        """As the protocol says; a worker process that dies (SIGKILL, the OOM killer) breaks the whole
        pool, so the pool is rebuilt and the jobs it was running go again, one at a time until none is
        left (the one that takes its worker down again is then the only suspect). A job whose worker died
        ``max_worker_deaths`` + 1 times is answered with :class:`WorkerLost`."""
        pending: dict[Future[R], tuple[Any, ...]] = {}
        again: deque[tuple[Any, ...]] = deque()
        deaths: dict[int, int] = {}  # id(args) -> how often a worker died while it ran
        source = iter(items)
        exhausted = False
        while True:
            pool = self._ensure_pool()
            room = self.max_in_flight if slots is None else min(self.max_in_flight, slots.limit(len(pending)))
            if again:
                room = min(room, 1)
            stale = False
            while len(pending) < room:
                if again:
                    args = again.popleft()
                elif exhausted:
                    break
                else:
                    nxt = next(source, None)
                    if nxt is None:
                        exhausted = True
                        break
                    args = nxt
                try:
                    pending[pool.submit(fn, *args)] = args
                except BrokenProcessPool:  # broke since the last wait: this one never started
                    again.appendleft(args)
                    stale = True
                    break
            if stale and not pending:  # nothing left on the broken pool to collect
                self._rebuild()
                continue
            if not pending:
                if (exhausted and not again) or slots is None:
                    return
                time.sleep(slots.poll_s)  # no slot yet: a higher-priority run or the quota holds them
                continue
            timeout = None if slots is None else slots.poll_s
            done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
            if broken:
                # A broken pool fails every future it holds; collect them all before building the next.
                done = set(wait(pending).done)
            for fut in done:
                args = pending.pop(fut)
                exc = fut.exception()
                if isinstance(exc, BrokenProcessPool):
                    n = deaths[id(args)] = deaths.get(id(args), 0) + 1
                    if n <= self.max_worker_deaths:
                        again.append(args)
                        continue
                    del deaths[id(args)]
                    exc = WorkerLost(
                        f"the worker process died {n} times while running this job (killed by a signal, "
                        "or out of memory); give workers more memory or fewer at once (--workers), then "
                        "rerun with --retry-failed"
                    )
                deaths.pop(id(args), None)
                yield (args, exc) if exc is not None else (args, fut.result())
            if broken:
                self._rebuild()

    def _rebuild(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)  # its workers are already gone or terminated by the pool itself

    def shutdown(self, cancel: bool = False) -> None:
        pool, self._pool = self._pool, None
        self._closed = True
        for key in self._keys:
            _SHARED.pop(key, None)
        self._keys.clear()
        if pool is None:
            return
        if cancel:
            procs = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:  # running jobs hold no registry state; stopping them loses nothing
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=5)
        else:
            pool.shutdown(wait=True)
