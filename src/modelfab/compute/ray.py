"""Ray executor: the same jobs as Ray tasks, for when one machine is outgrown.

Jobs write artifacts to the shared artifact store themselves; results (small) come back to the driver,
which registers them in batches. A task lost with its node is retried by Ray; registration is idempotent
per (run, job), so a retried job never makes a second version.

What ``share`` puts in Ray's object store is serialized there and readable by the cluster: the factory's
job context carries a reference to the encryption key (key file path, or the variable each worker reads
from its own environment), never the key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from modelfab.errors import ConfigError

if TYPE_CHECKING:
    from modelfab.compute.base import Slots
    from modelfab.recipe import Resources

__all__ = ["RayExecutor"]

R = TypeVar("R")


TARGET_TASK_SECONDS = 0.25
MAX_CHUNK = 32


_WORKER_CACHE: dict[bytes, Any] = {}


def _fetch(value: Any) -> Any:
    """Object refs inside a chunk are not resolved by Ray; fetch each once per worker process."""
    import ray

    if not isinstance(value, ray.ObjectRef):
        return value
    key = value.binary()
    if key not in _WORKER_CACHE:
        if len(_WORKER_CACHE) > 8:  # runs come and go; keep the newest few
            _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
        _WORKER_CACHE[key] = ray.get(value)
    return _WORKER_CACHE[key]


def _call_many(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> tuple[list[Any], float]:
    """Run a chunk of jobs in one task (a Ray task costs milliseconds; small jobs cost about as much)."""
    import time

    started = time.perf_counter()
    out: list[Any] = []
    for raw in chunk:
        args = tuple(_fetch(a) for a in raw)
        try:
            out.append(fn(*args))
        except Exception as exc:  # one job's failure is that job's result, not the chunk's
            out.append(exc)
    return out, time.perf_counter() - started


class RayExecutor:
    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        resources: Resources | None = None,
        max_retries: int = 3,
    ) -> None:
        try:
            import ray
        except ModuleNotFoundError:
            raise ConfigError("the Ray executor needs Ray: pip install 'modelfab[cluster]'") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    configure_logging=False,
                )
            except ConnectionError as exc:
                raise ConfigError(
                    f"cannot reach the Ray cluster at {address}: {exc}; start it with "
                    "`ray start --head` or fix --address / MODELFAB_RAY_ADDRESS"
                ) from None
            self._started = True
        options: dict[str, Any] = {"max_retries": max_retries, "retry_exceptions": False}
        if resources is not None:
            options["num_cpus"] = resources.cpus
            if resources.gpus:
                options["num_gpus"] = resources.gpus
            if resources.memory:
                from modelfab.units import parse_bytes

                options["memory"] = parse_bytes(resources.memory)
        self._task = ray.remote(**options)(_call_many)
        per_job = float(options.get("num_cpus", 1.0))
        cluster: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        total = int(cluster.get("CPU", 1) // per_job) or 1
        self.workers = workers or total
        self._pending: dict[Any, list[tuple[Any, ...]]] = {}

    def share(self, obj: Any) -> Any:
        # An ObjectRef passed as a task argument arrives in the task as the object itself.
        return self._ray.put(obj)

    def run_unordered(
        self, fn: Callable[..., R], items: Iterable[tuple[Any, ...]], slots: Slots | None = None
    ) -> Iterator[tuple[tuple[Any, ...], R | BaseException]]:
        """Jobs go out in chunks sized so a task runs about TARGET_TASK_SECONDS (one job a task at first,
        more once jobs prove short), keeping two tasks per worker in flight; never more tasks in flight
        than ``slots`` allows (Ray's own queue knows no priorities, so the claim decides what is sent)."""
        import time

        ray = self._ray
        source = iter(items)
        exhausted = False
        in_flight = max(2, self.workers * 2)
        chunk_size, job_seconds, jobs_timed = 1, 0.0, 0
        shared = ray.put(fn)
        while True:
            # A chunk runs its jobs one after another on one worker: it takes one slot.
            room = in_flight if slots is None else min(in_flight, slots.limit(len(self._pending)))
            while not exhausted and len(self._pending) < room:
                batch = [args for _, args in zip(range(chunk_size), source, strict=False)]
                if not batch:
                    exhausted = True
                    break
                self._pending[self._task.remote(shared, batch)] = batch
            if not self._pending:
                if exhausted or slots is None:
                    return
                time.sleep(slots.poll_s)  # no slot yet: a higher-priority run or the quota holds them
                continue
            timeout = None if slots is None else slots.poll_s
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=timeout)
            for ref in done:
                chunk = self._pending.pop(ref)
                try:
                    results, seconds = ray.get(ref)
                except Exception as exc:  # the task itself failed after Ray's retries
                    for args in chunk:
                        yield args, exc
                    continue
                jobs_timed += len(chunk)
                job_seconds += seconds
                chunk_size = max(
                    1, min(MAX_CHUNK, round(TARGET_TASK_SECONDS * jobs_timed / max(job_seconds, 1e-6)))
                )
                for args, result in zip(chunk, results, strict=True):
                    yield args, result

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            for ref in self._pending:
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # already finished or gone with its node
                    pass
        self._pending.clear()
        if self._started:
            self._ray.shutdown()
            self._started = False
