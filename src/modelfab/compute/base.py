"""The Executor protocol: what the factory needs from anything that runs its jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from modelfab.errors import ConfigError

__all__ = ["Executor", "make_executor"]

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``fn(*args)`` for many argument tuples and yields results as they finish, in any order."""

    workers: int

    def run_unordered(
        self, fn: Callable[..., R], items: Iterable[tuple[Any, ...]]
    ) -> Iterator[tuple[tuple[Any, ...], R | BaseException]]:
        """Yields (args, result) or (args, exception) for each item as it completes."""
        ...

    def shutdown(self, cancel: bool = False) -> None:
        """Stop workers; with ``cancel`` drop queued items and stop running ones now."""
        ...


def make_executor(kind: str, workers: int | None = None, **options: Any) -> Executor:
    if kind == "local":
        from modelfab.compute.local import LocalExecutor

        return LocalExecutor(workers)
    raise ConfigError(
        f"unknown executor {kind!r}; use 'local' (the Ray executor comes with modelfab[cluster])"
    )
