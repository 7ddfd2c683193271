"""Prediction ids and the prediction log the feedback loop reads."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
from serve_helpers import MakeServer

from modelfab.serve.options import ServeOptions
from modelfab.traffic.predlog import PredictionLog, new_prediction_id, read_predictions


def test_ids_are_unique_and_time_ordered() -> None:
    ids = [new_prediction_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 for i in ids)
    assert ids[0][:12] <= ids[-1][:12]


def test_every_answered_prediction_is_logged(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(grpc=False)
    body = {
        "id": "c-1",
        "inputs": [
            {"name": "age", "datatype": "FP32", "shape": [2, 1], "data": [30, 70]},
            {"name": "city", "datatype": "BYTES", "shape": [2, 1], "data": ["oslo", "lima"]},
        ],
    }
    with httpx.Client(base_url=f"http://{server.url}") as client:
        answers = [client.post("/v2/models/tabular/infer", json=body) for _ in range(5)]
    ids = [r.headers["x-prediction-id"] for r in answers]
    assert ids == [r.json()["parameters"]["prediction_id"] for r in answers]
    records = {r["id"]: r for r in read_predictions(tmp_path)}
    assert set(ids) <= set(records)
    rec = records[ids[0]]
    assert rec["model"] == "tabular" and rec["version"] == 1 and rec["time"] > 0
    assert rec["inputs"]["city"] == ["oslo", "lima"]
    assert np.asarray(rec["inputs"]["age"]).ravel().tolist() == [30.0, 70.0]
    assert rec["outputs"]["label"] == answers[0].json()["outputs"][0]["data"]


def test_sampling_rate_zero_logs_nothing(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server(ServeOptions(log_sample_rate=0.0), grpc=False)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    r = httpx.post(f"http://{server.url}/v2/models/double/infer", json=body)
    assert r.status_code == 200 and r.headers["x-prediction-id"]
    assert list(read_predictions(tmp_path)) == []


def test_reader_skips_a_torn_last_line(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, worker="t")
    log.write(
        [
            {
                "id": "a",
                "model": "m",
                "version": 1,
                "time": 1.0,
                "inputs": {"x": np.ones((1, 2), dtype=np.float16)},
                "outputs": {"y": np.array(["s"], dtype=object)},
            }
        ]
    )
    log.close()
    segment = next((tmp_path / "predictions").iterdir())
    with segment.open("ab") as fh:
        fh.write(b'{"id": "b", "mod')
    assert [r["id"] for r in read_predictions(tmp_path)] == ["a"]
    assert next(iter(read_predictions(tmp_path)))["outputs"]["y"] == ["s"]


def test_ids_from_a_forked_worker_use_another_prefix() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send one id and leave without running the parent's cleanup
        os.write(write, new_prediction_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    mine = new_prediction_id()
    assert len(child) == 32 and child[12:20] != mine[12:20]


def test_log_syncs_in_the_background_and_close_stops_it(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, worker="s", fsync_interval=0.01)
    record = {"id": "a", "model": "m", "version": 1, "time": 1.0, "inputs": {}, "outputs": {}}
    log.write([record])
    syncer = log._syncer
    assert syncer is not None and syncer.is_alive()
    log.close()
    assert not syncer.is_alive()
    assert [r["id"] for r in read_predictions(tmp_path)] == ["a"]


def test_records_keep_strided_and_text_arrays(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, worker="t")
    strided = np.arange(6, dtype=np.float32).reshape(2, 3)[:, 1]  # not C-contiguous: orjson's fallback
    texts = np.array([b"\xff", "x"], dtype=object)
    record = {"id": "a", "model": "m", "version": 1, "time": 1.0, "inputs": {"s": strided, "t": texts}}
    log.write([{**record, "outputs": {}}])
    log.close()
    (row,) = list(read_predictions(tmp_path))
    assert row["inputs"] == {"s": [1.0, 4.0], "t": ["\ufffd", "x"]}
