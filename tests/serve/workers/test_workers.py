"""Worker processes: a SIGKILLed worker is replaced and no answered prediction is missing from the log."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from serve_helpers import FakeSource, free_port, start_server, wait_for

from modelfab.traffic.predlog import read_predictions

if TYPE_CHECKING:
    from modelfab.serve.workers.supervisor import Supervisor

pytestmark = pytest.mark.slow


def _status(home: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((home / "run" / "serve.json").read_text())
    return doc


def test_killed_worker_is_restarted_and_predictions_survive(source: FakeSource, tmp_path: Path) -> None:
    port = free_port()
    proc = start_server(source, tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    answered: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        while not stop.is_set():
            try:
                with httpx.Client(base_url=url, timeout=10) as c:
                    while not stop.is_set():
                        r = c.post("/v2/models/double/infer", json=body)
                        if r.status_code == 200:
                            answered.append(r.headers["x-prediction-id"])
                        else:
                            failures.append(r.text)
            except httpx.HTTPError as exc:  # a connection to the killed worker breaks
                failures.append(repr(exc))

    try:
        wait_for(lambda: len(_status(tmp_path)["workers"]) == 2, 60, "two workers")  # type: ignore[arg-type]
        wait_for(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200, 60, "ready")
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) > 50, 60, "traffic")
        victim = _status(tmp_path)["workers"]["0"]  # type: ignore[index]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: _status(tmp_path)["workers"]["0"] != victim, 30, "a replacement")  # type: ignore[index]
        replaced = _status(tmp_path)["workers"]["0"]  # type: ignore[index]
        count = len(answered)
        wait_for(lambda: len(answered) > count + 50, 60, "traffic after the restart")
        print(f"replacement worker started {time.monotonic() - killed_at:.2f}s after SIGKILL")
        stop.set()
        for t in threads:
            t.join(30)
        assert replaced != victim
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0
    logged = {r["id"] for r in read_predictions(tmp_path)}
    missing = [i for i in answered if i not in logged]
    assert not missing, f"{len(missing)} answered predictions are not in the log"
    assert all("Traceback" not in f for f in failures)


class _DeadProcess:
    pid = 4242
    exitcode = 255
    sentinel = -1

    def is_alive(self) -> bool:
        return False


class _GoneForkserver:
    def Process(self, **_: object) -> object:  # multiprocessing's name
        class _Unstartable:
            def start(self) -> None:
                raise EOFError("unexpected EOF")

        return _Unstartable()


def _supervisor() -> Supervisor:
    from modelfab.serve.workers.supervisor import Supervisor, WorkerSpec

    spec = WorkerSpec(
        settings=None, host="127.0.0.1", port=0, grpc_port=None, options=None, source_factory="x:y"
    )
    return Supervisor(spec, 1)


def test_supervisor_stops_when_its_forkserver_is_gone() -> None:
    sup = _supervisor()
    sup._procs[0] = _DeadProcess()
    sup._ctx = _GoneForkserver()  # type: ignore[assignment]
    sup._restart_dead()  # a worker died and none can be started: stop, do not crash
    assert sup._stop
    assert sup._procs == {}


def test_supervisor_does_not_restart_workers_while_stopping() -> None:
    sup = _supervisor()
    dead = _DeadProcess()
    sup._procs[0] = dead
    sup.stop()
    sup._restart_dead()
    assert sup._procs[0] is dead  # left for the shutdown, not replaced
