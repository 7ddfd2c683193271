"""Executors run factory jobs: a local process pool by default, Ray when a cluster is used."""

from __future__ import annotations

from modelfab.compute.base import Executor, make_executor
from modelfab.compute.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "make_executor"]
