"""Ray executor: the same jobs as Ray tasks, for when one machine is outgrown.

Jobs write artifacts to the shared artifact store themselves; results (small) come back to the driver,
which registers them in batches. A task lost with its node is retried by Ray; registration is idempotent
per (run, job), so a retried job never makes a second version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from modelfab.errors import ConfigError

if TYPE_CHECKING:
    from modelfab.recipe import Resources

__all__ = ["RayExecutor"]

R = TypeVar("R")


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


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
                from modelfab.serve.options import parse_bytes

                options["memory"] = parse_bytes(resources.memory)
        self._task = ray.remote(**options)(_call)
        per_job = float(options.get("num_cpus", 1.0))
        cluster: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        total = int(cluster.get("CPU", 1) // per_job) or 1
        self.workers = workers or total
        self._pending: dict[Any, tuple[Any, ...]] = {}

    def share(self, obj: Any) -> Any:
        # An ObjectRef passed as a task argument arrives in the task as the object itself.
        return self._ray.put(obj)

    def run_unordered(
        self, fn: Callable[..., R], items: Iterable[tuple[Any, ...]]
    ) -> Iterator[tuple[tuple[Any, ...], R | BaseException]]:
        ray = self._ray
        source = iter(items)
        exhausted = False
        in_flight = max(2, self.workers * 2)
        while True:
            while not exhausted and len(self._pending) < in_flight:
                args = next(source, None)
                if args is None:
                    exhausted = True
                    break
                self._pending[self._task.remote(fn, *args)] = args
            if not self._pending:
                return
            done, _ = ray.wait(list(self._pending), num_returns=1)
            for ref in done:
                args = self._pending.pop(ref)
                try:
                    yield args, ray.get(ref)
                except Exception as exc:
                    yield args, exc

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
