"""The Executor protocol: what the factory needs from anything that runs its jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from modelfab.errors import ModelfabError

__all__ = ["Executor", "Slots", "WorkerLost"]

R = TypeVar("R")


class WorkerLost(ModelfabError):
    """A job's worker died under it (killed by a signal, out of memory) more often than an executor
    runs such a job again."""


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
