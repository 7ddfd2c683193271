"""Executors run factory jobs: a local process pool by default, Ray when a cluster is used."""

from __future__ import annotations

from modelfab.compute.base import Executor
from modelfab.compute.local import LocalExecutor
from modelfab.compute.select import make_executor

__all__ = ["Executor", "LocalExecutor", "make_executor"]
