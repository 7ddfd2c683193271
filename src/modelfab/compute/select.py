"""Choosing an executor by name: the one module that knows every kind (base.py knows none of them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfab.compute.base import Executor
from modelfab.errors import ConfigError

if TYPE_CHECKING:
    from modelfab.recipe import Resources

__all__ = ["make_executor"]


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
