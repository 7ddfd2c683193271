"""Feedback: validation, unknown and duplicate ids, bulk CSV, the HTTP route on a real server, and
durability when the server is killed right after it answered."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from modelfab.errors import DataError, InvalidInputError
from modelfab.settings import Settings
from modelfab.store import Workspace
from modelfab.store import schema as t
from modelfab.traffic.feedback import FeedbackItem, FeedbackStore, parse_items, read_feedback_csv
from modelfab.traffic.index import PredictionIndex
from modelfab.traffic.predlog import PredictionLog, new_prediction_id


def log_predictions(home: Path, n: int, rows: int = 1, worker: str = "0") -> list[str]:
    """Write ``n`` predictions the way a server worker does; returns their ids."""
    log = PredictionLog(home, worker=worker)
    ids = [new_prediction_id() for _ in range(n)]
    log.write(
        [
            {
                "id": pid,
                "model": "m",
                "version": 1,
                "time": time.time(),
                "inputs": {
                    "x": np.full((rows, 1), float(i), dtype=np.float32),
                    "c": np.array([["a"]] * rows, dtype=object),
                },
                "outputs": {
                    "label": np.zeros(rows, dtype=np.int64),
                    "probabilities": np.full((rows, 2), 0.5, dtype=np.float32),
                },
            }
            for i, pid in enumerate(ids)
        ]
    )
    log.close()
    return ids


def outcomes(ws: Workspace) -> dict[tuple[str, int], str | None]:
    p = t.prediction_rows
    with ws.engine.connect() as conn:
        return {
            (r.id, r.row_index): r.outcome
            for r in conn.execute(sa.select(p.c.id, p.c.row_index, p.c.outcome))
        }


def store_for(ws: Workspace) -> FeedbackStore:
    return FeedbackStore(ws.engine, ws.registry.tenant, PredictionIndex(ws.engine, ws.settings.home))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"items": {}}, "JSON object"),
        ({"items": [1]}, r"items\[0\]: must be an object"),
        ({"items": [{"id": "a", "outcome": 1}, {"outcome": 1}]}, r"items\[1\]\.id"),
        ({"items": [{"id": "", "outcome": 1}]}, r"items\[0\]\.id"),
        ({"items": [{"id": "x" * 65, "outcome": 1}]}, r"items\[0\]\.id"),
        ({"items": [{"id": "a", "row": -1, "outcome": 1}]}, r"items\[0\]\.row"),
        ({"items": [{"id": "a", "row": True, "outcome": 1}]}, r"items\[0\]\.row"),
        ({"items": [{"id": "a", "row": "0", "outcome": 1}]}, r"items\[0\]\.row"),
        ({"items": [{"id": "a"}]}, r"items\[0\]\.outcome: required"),
        ({"items": [{"id": "a", "outcome": None}]}, r"items\[0\]\.outcome"),
        ({"items": [{"id": "a", "outcome": [1]}]}, r"items\[0\]\.outcome"),
        ({"items": [{"id": "a", "outcome": float("nan")}]}, r"items\[0\]\.outcome"),
        ({"items": [{"id": "a", "outcome": 1, "label": 2}]}, r"items\[0\]: unknown field 'label'"),
    ],
)
def test_malformed_feedback_names_the_item_and_field(body: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_items(body)


def test_outcomes_are_normalised() -> None:
    items = parse_items(
        {
            "items": [
                {"id": "a", "outcome": True},
                {"id": "b", "row": 2, "outcome": 3.0},
                {"id": "c", "outcome": "yes"},
                {"id": "d", "outcome": 0.25},
            ]
        }
    )
    assert [(i.id, i.row, i.outcome) for i in items] == [
        ("a", 0, "1"),
        ("b", 2, "3"),
        ("c", 0, '"yes"'),
        ("d", 0, "0.25"),
    ]


def test_unknown_and_duplicate_feedback(ws: Workspace) -> None:
    ids = log_predictions(ws.settings.home, 3, rows=2)
    store = store_for(ws)
    result = store.ingest(
        [
            FeedbackItem(ids[0], 0, "0"),
            FeedbackItem(ids[0], 0, "1"),
            FeedbackItem(ids[0], 1, "1"),
            FeedbackItem("nope", 0, "1"),
            FeedbackItem(ids[1], 5, "1"),
        ]
    )
    assert result.accepted == 2  # the repeated (id, row) counts once
    assert result.unknown == ["nope", ids[1]]  # an unknown id, and a row the prediction does not have
    got = outcomes(ws)
    assert got[(ids[0], 0)] == "1"  # the last one wins
    assert got[(ids[0], 1)] == "1" and got[(ids[1], 0)] is None
    again = store.ingest([FeedbackItem(ids[0], 0, "0")])  # sent again later: overwrites, still one row
    assert again.accepted == 1 and outcomes(ws)[(ids[0], 0)] == "0"
    assert len(outcomes(ws)) == 6


def test_index_follows_several_workers_and_resumes_from_offsets(ws: Workspace) -> None:
    home = ws.settings.home
    a = log_predictions(home, 5, worker="0")
    b = log_predictions(home, 4, rows=3, worker="1")
    index = PredictionIndex(ws.engine, home)
    assert index.sync() == 5 + 12
    assert index.sync() == 0  # nothing new: offsets remembered
    segment = sorted((home / "predictions").iterdir())[0]
    with segment.open("ab") as fh:
        fh.write(b'{"id": "torn", "mod')  # a worker killed mid-line
    c = log_predictions(home, 2, worker="2")
    assert PredictionIndex(ws.engine, home).sync() == 2
    assert {k[0] for k in outcomes(ws)} == set(a + b + c)


def test_feedback_csv(ws: Workspace, tmp_path: Path) -> None:
    ids = log_predictions(ws.settings.home, 2)
    good = tmp_path / "fb.csv"
    good.write_text(f"id,row,outcome\n{ids[0]},0,1\n{ids[1]},,yes\nunknown-id,0,0\n")
    items = read_feedback_csv(good)
    assert [(i.row, i.outcome) for i in items] == [(0, "1"), (0, '"yes"'), (0, "0")]
    assert store_for(ws).ingest(items).to_json() == {"accepted": 2, "unknown": ["unknown-id"]}
    for text, where in [
        ("id,row\nabc,0\n", ":1: the header"),
        ("id,row,outcome\nabc,0,1\nabc,x,1\n", ":3: row must be a number"),
        ("id,row,outcome\n,0,1\n", ":2: id must be"),
        ("id,row,outcome\nabc,0\n", ":2: 2 fields"),
        ("id,outcome\nabc,\n", ":2: outcome must be"),
    ]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DataError, match=f"{bad}{where}"):
            read_feedback_csv(bad)
    with pytest.raises(DataError, match="no such file"):
        read_feedback_csv(tmp_path / "missing.csv")


# -- the HTTP route on a real server ------------------------------------------------------------------
SERVER = """
import sys
import uvicorn
from starlette.applications import Starlette
from modelfab.serve.transport.feedback import routes
from modelfab.settings import Settings
app = Starlette(routes=routes(Settings()))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "MODELFAB_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(f"{url}/v2/feedback", json={"items": []}, timeout=2)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("feedback server did not start")


def test_feedback_route_answers_and_survives_sigkill_right_after_ack(settings: Settings) -> None:
    ws = Workspace.open(settings)
    proc, url = _start(settings.home)
    try:
        ids = log_predictions(settings.home, 300, worker="srv")  # logged after the server started
        items = [{"id": i, "row": 0, "outcome": n % 2} for n, i in enumerate(ids)]
        r = httpx.post(f"{url}/v2/feedback", json={"items": [*items, {"id": "ghost", "outcome": 1}]})
        assert r.status_code == 200 and r.json() == {"accepted": 300, "unknown": ["ghost"]}
        bad = httpx.post(f"{url}/v2/feedback", json={"items": [{"id": ids[0], "outcome": {}}]})
        assert bad.status_code == 400 and "items[0].outcome" in bad.json()["error"]
        assert httpx.post(f"{url}/v2/feedback", content=b"{nope").status_code == 400
        last = httpx.post(f"{url}/v2/feedback", json={"items": [{"id": ids[-1], "outcome": 7}]})
        assert last.json()["accepted"] == 1
        proc.send_signal(signal.SIGKILL)  # right after the acknowledgement
        proc.wait(10)
        got = outcomes(ws)
        assert sum(v is not None for v in got.values()) == 300
        assert got[(ids[-1], 0)] == "7" and got[(ids[0], 0)] == "0"
    finally:
        if proc.poll() is None:
            proc.kill()
        ws.close()
