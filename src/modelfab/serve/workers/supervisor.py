"""The supervisor: starts worker processes, restarts crashed ones at once, and applies the autoscaler.

Workers come from a forkserver that has already imported the serving stack, so a replacement is serving
well within two seconds of a crash, while the other workers keep answering on the shared port. Each worker
has a pipe to the supervisor (:mod:`.control`): repository load/unload reach every worker through it, and
each worker learns its share of the model memory as workers come and go.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfab.serve.workers.autoscale import Autoscaler, ScalePolicy, worker_budget
from modelfab.serve.workers.control import Relay

__all__ = ["Supervisor", "WorkerSpec"]

log = logging.getLogger("modelfab.serve")
PRELOAD = ["modelfab.serve.workers.process", "numpy", "onnxruntime", "httptools", "starlette", "grpc"]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; pickled to it."""

    settings: Any
    host: str
    port: int
    grpc_port: int | None
    options: Any
    source_factory: str
    log_level: str = "INFO"
    # The whole server's model memory, divided among the running workers; None: each keeps what options say.
    memory_bytes: int | None = None


class Supervisor:
    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        *,
        policy: ScalePolicy | None = None,
        status_file: Path | None = None,
        interval: float = 1.0,
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.count = workers
        self.capacity = max(workers, policy.max_workers if policy else workers)
        self.status_file = status_file
        self.interval = interval
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)
        # load per worker, scale events up and down, scrape generation (see metrics.ScrapeFanout)
        self._slots: Any = self._ctx.Array("i", self.capacity + 3, lock=False)
        self._procs: dict[int, Any] = {}
        self._started: dict[int, float] = {}
        self._fast_failures: dict[int, int] = {}
        self._retiring: list[Any] = []
        self._stop = False
        self.relay = Relay(self._ctx)
        if spec.memory_bytes is not None:
            self.relay.budget = worker_budget(spec.memory_bytes, workers)
        self.on_worker_exit: Callable[[int], None] | None = None

    def _start(self, index: int) -> None:
        from modelfab.serve.workers.process import worker_main

        conn = self.relay.attach(index)
        proc = self._ctx.Process(
            target=worker_main,
            args=(self.spec, index, self._slots, self.capacity, conn),
            name=f"modelfab-worker-{index}",
            daemon=False,
        )
        try:
            proc.start()
        except BaseException:
            self.relay.detach(index)
            raise
        finally:
            conn.close()  # the worker has its own copy; ours closed, its exit reads as EOF here
        self._procs[index] = proc
        self._started[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, proc.pid)

    def _write_status(self) -> None:
        if self.status_file is None:
            return
        doc = {
            "pid": os.getpid(),
            "port": self.spec.port,
            "grpc_port": self.spec.grpc_port,
            "workers": {str(i): p.pid for i, p in sorted(self._procs.items())},
        }
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.status_file)

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for i in range(self.count):
            self._start(i)
        self._write_status()
        scaler = Autoscaler(self.policy) if self.policy is not None else None
        next_sample = time.monotonic() + self.interval
        try:
            while not self._stop:
                sentinels = [p.sentinel for p in self._procs.values()]
                multiprocessing.connection.wait([*sentinels, *self.relay.connections()], timeout=0.2)
                self.relay.poll()
                self._restart_dead()
                self._reap_retired()
                if scaler is not None and time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + self.interval
                    self._autoscale(scaler)
        finally:
            self._shutdown()

    def _restart_dead(self) -> None:
        changed = False
        for index, proc in list(self._procs.items()):
            if proc.is_alive():
                continue
            if self._stop:  # stopping: a worker that exits first (one signal to the group) stays down
                return
            lived = time.monotonic() - self._started.get(index, 0.0)
            log.warning(
                "worker %d (pid %s) exited with code %s after %.1fs; restarting",
                index,
                proc.pid,
                proc.exitcode,
                lived,
            )
            _mark_dead(proc.pid)
            self.relay.detach(index)
            self._slots[index] = 0
            fails = self._fast_failures.get(index, 0) + 1 if lived < 2.0 else 0
            self._fast_failures[index] = fails
            if fails > 2:  # crash loop: back off instead of spinning
                time.sleep(min(5.0, 0.25 * 2 ** (fails - 3)))
            try:
                self._start(index)
            except (EOFError, OSError) as exc:  # the forkserver is gone (killed with its process group)
                log.error("cannot start a worker (%s: %s); stopping the server", type(exc).__name__, exc)
                self._procs.pop(index, None)
                self._stop = True
                return
            changed = True
            if self.on_worker_exit is not None:
                self.on_worker_exit(index)
        if changed:
            self._write_status()

    def _autoscale(self, scaler: Autoscaler) -> None:
        total = sum(self._slots[i] for i in range(self.count))
        want = scaler.observe(self.count, float(total))
        if want > self.count:
            log.info(
                "autoscaler: %d requests in flight on %d workers; scaling up to %d", total, self.count, want
            )
            # The workers there are shrink first, so the server stays within its memory as new ones load.
            self._rebalance(want)
            for i in range(self.count, want):
                self._start(i)
            self._slots[self.capacity] += want - self.count
            self.count = want
        elif want < self.count:
            log.info("autoscaler: idle; scaling down from %d to %d workers", self.count, want)
            for i in range(want, self.count):
                proc = self._procs.pop(i)
                proc.terminate()  # SIGTERM: the worker finishes requests in flight, then exits
                self._retiring.append(proc)
                self.relay.detach(i)
            self._slots[self.capacity + 1] += self.count - want
            self.count = want
            # A bigger budget allocates nothing: the survivors fill it only as they load more models, by
            # which time the retiring workers (finishing their requests in flight) have exited.
            self._rebalance(want)
        else:
            return
        self._write_status()

    def _rebalance(self, running: int) -> None:
        if self.spec.memory_bytes is not None:
            self.relay.set_budget(worker_budget(self.spec.memory_bytes, running))

    def _reap_retired(self) -> None:
        for proc in list(self._retiring):
            if not proc.is_alive():
                proc.join()
                _mark_dead(proc.pid)
                self._retiring.remove(proc)

    def _shutdown(self) -> None:
        procs = list(self._procs.values()) + self._retiring
        for p in procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 15
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        log.info("server stopped")


def _mark_dead(pid: int | None) -> None:
    from modelfab.serve.metrics import mark_dead, metrics_dir

    folder = metrics_dir()
    if pid is not None and folder is not None:
        mark_dead(folder, pid)
