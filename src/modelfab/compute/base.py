"""The Executor protocol: what the factory needs from anything that runs its jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from modelfab.errors import ConfigError

if TYPE_CHECKING:
    from modelfab.recipe import Resources

__all__ = ["Executor", "Slots", "make_executor"]

R = TypeVar("R")


class Slots(Protocol):
    """How many jobs a run may have in flight now (its share of a quota); asked again every ``poll_s``
    seconds while the executor waits, and after every finished job."""

    poll_s: float

    def limit(self, in_flight: int) -> int: ...


class Executor(Protocol):
    """Runs ``fn(*args)`` for many argument tuples and yields results as they finish, in any order."""

    workers: int

    def share(self, obj: Any) -> Any:
        """A cheap handle to ``obj`` to pass in task arguments instead of the object itself (a run's data
        goes to each worker once). Tasks turn it back with ``modelfab.compute.local.resolve``."""
        ...

    def run_unordered(
        self, fn: Callable[..., R], items: Iterable[tuple[Any, ...]], slots: Slots | None = None
    ) -> Iterator[tuple[tuple[Any, ...], R | BaseException]]:
        """Yields (args, result) or (args, exception) for each item as it completes. Items are taken
        from ``items`` only when they can start: never more in flight than ``slots`` allows."""
        ...

    def shutdown(self, cancel: bool = False) -> None:
        """Stop; with ``cancel`` drop queued items and stop running ones now."""
        ...


def make_executor(
    kind: str, workers: int | None = None, *, address: str | None = None, resources: Resources | None = None
) -> Executor:
    """``local`` (process pool, the default) or ``ray`` (a Ray cluster at ``address``, or a local one)."""
    if kind == "local":
        from modelfab.compute.local import LocalExecutor

        return LocalExecutor(workers)
    if kind == "ray":
        from modelfab.compute.ray import RayExecutor

        return RayExecutor(workers, address=address, resources=resources)
    raise ConfigError(
        f"unknown executor {kind!r}; use 'local' or 'ray' (set with --executor or MODELFAB_EXECUTOR)"
    )
