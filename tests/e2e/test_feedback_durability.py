"""Feedback through the real server: durable once acknowledged, and accepted by any worker."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from modelfab.demo.server import ServerProcess
from modelfab.iterate.window import labelled_rows
from modelfab.settings import Settings
from modelfab.store import Workspace
from modelfab.traffic.predlog import read_predictions
from tests.e2e.conftest import complete_rows, infer_json, start_server

MODEL = "churn.site-000"


def labelled(home: Path, model: str) -> set[tuple[str, int, int]]:
    """What the iteration API sees: (prediction id, row, outcome) of every labelled row."""
    ws = Workspace.open(Settings(home=home))
    try:
        rows = labelled_rows(ws.engine, ws.registry.tenant, model, 100_000)
    finally:
        ws.close()
    return {
        (i, r, int(orjson.loads(o)))
        for i, r, o in zip(rows.ids, rows.row_index, rows.outcome, strict=True)
        if o is not None
    }


def test_acknowledged_feedback_survives_sigkill_of_the_whole_server(home: Path) -> None:
    server = start_server(home)
    try:
        rows = complete_rows("site-000", 120, seed=1)
        sent: set[tuple[str, int, int]] = set()
        items = []
        with httpx.Client() as client:
            for start in range(0, len(rows), 4):
                part = rows.iloc[start : start + 4]
                pid = infer_json(server.url, MODEL, part, client)
                for i, y in enumerate(part["churned"]):
                    items.append({"id": pid, "row": i, "outcome": int(y)})
                    sent.add((pid, i, int(y)))
            resp = client.post(f"http://{server.url}/v2/feedback", content=orjson.dumps({"items": items}))
        assert resp.json() == {"accepted": len(items), "unknown": []}
    finally:
        server.kill()  # right after the acknowledgement: no graceful shutdown, no flush
    assert server.proc is not None and server.proc.returncode == -9

    restarted = start_server(home)
    try:
        assert labelled(home, MODEL) == sent
        # The restarted server knows those predictions: repeating an outcome is accepted, counted once.
        again = httpx.post(
            f"http://{restarted.url}/v2/feedback", content=orjson.dumps({"items": items[:10]}), timeout=30
        )
        assert again.json() == {"accepted": 10, "unknown": []}
        assert labelled(home, MODEL) == sent
    finally:
        restarted.stop()


def test_feedback_reaching_another_worker_than_the_prediction_is_accepted(
    home: Path, server: ServerProcess
) -> None:
    rows = complete_rows("site-002", 80, seed=2)
    items = []
    # A fresh connection per request: SO_REUSEPORT spreads connections over both workers.
    for i in range(len(rows)):
        pid = infer_json(server.url, "churn.site-002", rows.iloc[i : i + 1])
        items.append({"id": pid, "row": 0, "outcome": int(rows["churned"].iloc[i])})
    segments = {p.name.split("-")[1] for p in (home / "predictions").glob("*.jsonl") if p.stat().st_size}
    assert len(segments) == 2, "both workers must have answered predictions for this test to mean anything"
    assert len(list(read_predictions(home))) == len(rows)
    for item in items:
        resp = httpx.post(f"http://{server.url}/v2/feedback", content=orjson.dumps({"items": [item]}))
        assert resp.status_code == 200 and resp.json() == {"accepted": 1, "unknown": []}, resp.text
    assert labelled(home, "churn.site-002") == {(i["id"], 0, i["outcome"]) for i in items}
