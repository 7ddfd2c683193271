"""The well-behaved side of bench/faults.py: clients that send infer requests and their outcomes, and the
probes (RSS of the server's processes, /metrics series, feedback found in the registry)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

NUMERIC = ["tenure", "monthly_spend", "support_calls"]
CATEGORICAL = ["plan", "contract"]


@dataclass
class Tally:
    """What the clients saw during one phase."""

    served: int = 0  # requests answered 200 (infer and feedback)
    errors: Counter[str] = field(default_factory=Counter)
    acked: set[tuple[str, int]] = field(default_factory=set)  # (prediction id, row) with a 200 for feedback
    rows_by_model: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, of answered infer requests

    def latency_ms(self, q: float) -> float:
        return float(np.quantile(self.latencies, q)) * 1000 if self.latencies else float("nan")


class Clients:
    """``threads`` clients, each looping: infer ``batch`` rows of a site, and every ``feedback_every``
    answers post the outcomes of those rows. A fresh connection every ``reconnect_every`` requests, as real
    clients come and go (so an attack on accepting connections shows). ``skew`` sends that share of the
    requests to ``skew_model`` with rows from ``skew_rows`` (the shifted customers of the loop phase)."""

    def __init__(
        self,
        url: str,
        rows: dict[str, pd.DataFrame],
        threads: int = 3,
        batch: int = 8,
        feedback_every: int = 4,
        reconnect_every: int = 25,
        timeout: float = 5.0,
    ) -> None:
        self.base = f"http://{url}"
        self.rows = rows
        self.models = sorted(rows)
        self.threads = threads
        self.batch = batch
        self.feedback_every = feedback_every
        self.reconnect_every = reconnect_every
        self.timeout = timeout
        self.skew: tuple[str, pd.DataFrame, float] | None = None
        self.lock = threading.Lock()
        self.tally = Tally()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self.tally = Tally()
        self._workers = [
            threading.Thread(target=self._run, args=(i,), name=f"faults-client-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for t in self._workers:
            t.start()

    def stop(self) -> Tally:
        self._stop.set()
        for t in self._workers:
            t.join(3 * self.timeout + 5)
        return self.tally

    def _error(self, what: str) -> None:
        with self.lock:
            self.tally.errors[what] += 1

    def _run(self, seed: int) -> None:
        import httpx

        rng = np.random.default_rng(1000 + seed)
        pending: list[dict[str, Any]] = []
        client: httpx.Client | None = None
        sent = 0
        try:
            while not self._stop.is_set():
                if client is None or sent % self.reconnect_every == 0:
                    if client is not None:
                        client.close()
                    client = httpx.Client(base_url=self.base, timeout=self.timeout)
                sent += 1
                if len(pending) >= self.feedback_every * self.batch:
                    self._feedback(client, pending)
                    pending = []
                    continue
                model, frame = self._pick(rng)
                part = frame.iloc[rng.integers(0, len(frame), self.batch)]
                pid = self._infer(client, model, part)
                if pid is None:
                    time.sleep(0.05)  # a failing server is not hammered by its well-behaved clients
                    continue
                with self.lock:
                    self.tally.rows_by_model[model] += len(part)
                pending += [{"id": pid, "row": i, "outcome": int(y)} for i, y in enumerate(part["churned"])]
            if pending and client is not None:
                self._feedback(client, pending)  # the phase's last outcomes, so none stay unsent
        finally:
            if client is not None:
                client.close()

    def _pick(self, rng: np.random.Generator) -> tuple[str, pd.DataFrame]:
        skew = self.skew
        if skew is not None and rng.random() < skew[2]:
            return skew[0], skew[1]
        model = self.models[int(rng.integers(len(self.models)))]
        return model, self.rows[model]

    def _infer(self, client: Any, model: str, part: pd.DataFrame) -> str | None:
        inputs = [
            {"name": c, "datatype": "FP32", "shape": [len(part), 1], "data": part[c].astype(float).tolist()}
            for c in NUMERIC
        ] + [
            {"name": c, "datatype": "BYTES", "shape": [len(part), 1], "data": part[c].astype(str).tolist()}
            for c in CATEGORICAL
        ]
        started = time.perf_counter()
        try:
            resp = client.post(f"/v2/models/{model}/infer", content=orjson.dumps({"inputs": inputs}))
        except Exception as exc:  # resets, timeouts: counted, never raised
            self._error(f"infer {type(exc).__name__}")
            return None
        if resp.status_code != 200:
            self._error(f"infer HTTP {resp.status_code}")
            return None
        with self.lock:
            self.tally.served += 1
            self.tally.latencies.append(time.perf_counter() - started)
        return str(resp.headers["x-prediction-id"])

    def _feedback(self, client: Any, items: list[dict[str, Any]]) -> None:
        try:
            resp = client.post("/v2/feedback", content=orjson.dumps({"items": items}))
        except Exception as exc:
            self._error(f"feedback {type(exc).__name__}")
            return
        if resp.status_code != 200:
            self._error(f"feedback HTTP {resp.status_code}")
            return
        doc = resp.json()
        with self.lock:
            self.tally.served += 1
            if doc.get("unknown"):
                self.tally.errors["feedback unknown ids"] += len(doc["unknown"])
            unknown = set(doc.get("unknown") or [])
            self.tally.acked.update((i["id"], i["row"]) for i in items if i["id"] not in unknown)


def group_rss(pgid: int) -> int:
    """Resident bytes summed over every process of the server's process group (supervisor, workers and
    the forkserver they are forked from)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue  # a process that just exited
    return total


def metric_series(url: str) -> int:
    """Sample lines in /metrics (one per series), or -1 when it does not answer."""
    import httpx

    try:
        text = httpx.get(f"http://{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return -1
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def missing_feedback(home: Path, acked: set[tuple[str, int]]) -> int:
    """How many acknowledged (prediction id, row) outcomes have no outcome in the registry."""
    import sqlalchemy as sa

    from modelfab.settings import Settings
    from modelfab.store import Workspace
    from modelfab.store import schema as t

    if not acked:
        return 0
    ws = Workspace.open(Settings(home=home))
    p = t.prediction_rows
    found: set[tuple[str, int]] = set()
    ids = sorted({i for i, _ in acked})
    try:
        with ws.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                q = sa.select(p.c.id, p.c.row_index).where(
                    p.c.tenant == ws.registry.tenant,
                    p.c.id.in_(ids[start : start + 500]),
                    p.c.outcome.is_not(None),
                )
                found.update((str(i), int(r)) for i, r in conn.execute(q))
    finally:
        ws.close()
    return len(acked - found)
