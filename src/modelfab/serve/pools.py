"""Thread pools of one worker, one per kind of blocking work, so that one kind cannot starve another.

Registry lookups (milliseconds, on the path of a first request for a model) and loads of models too big to
load on the event loop (fetch, digest check, session build: up to seconds each) used to share the loop's
default executor with everything else: a burst of slow loads took every thread, and lookups for hot models
queued behind them. Each kind now has its own few threads; feedback ingest has its own in
:mod:`modelfab.serve.transport.feedback`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["LOAD_THREADS", "LOOKUP_THREADS", "Pools", "run_in"]

T = TypeVar("T")
# Lookups are short and many may be waited on at once (a cold start of many models); loads are few and long,
# and each build is CPU work that more threads than cores would only slow down.
LOOKUP_THREADS = 4
LOAD_THREADS = 2


async def run_in(executor: Executor | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in ``executor`` (None: the loop's default executor), awaited."""
    return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))


class Pools:
    """The lookup and load executors of one worker."""

    def __init__(self, lookup_threads: int = LOOKUP_THREADS, load_threads: int = LOAD_THREADS) -> None:
        self.lookup = ThreadPoolExecutor(max(1, lookup_threads), thread_name_prefix="modelfab-lookup")
        self.load = ThreadPoolExecutor(max(1, load_threads), thread_name_prefix="modelfab-load")

    def close(self) -> None:
        # Not waited for: a lookup stuck on an unreachable database must not hold up a worker's exit, and
        # nothing is left to receive a result.
        self.lookup.shutdown(wait=False, cancel_futures=True)
        self.load.shutdown(wait=False, cancel_futures=True)
