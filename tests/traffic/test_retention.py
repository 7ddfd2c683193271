"""Retention: old, fully indexed log segments and old prediction rows go; unindexed segments, rows of a
live trial and recent data stay. Rows are deleted the same way on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from modelfab.errors import ConfigError
from modelfab.settings import Settings
from modelfab.store import Workspace
from modelfab.store import schema as t
from modelfab.traffic.index import PredictionIndex
from modelfab.traffic.predlog import PredictionLog
from modelfab.traffic.retention import delete_rows, run_retention

DAY = 86400.0


def rows(n: int, model: str, at: float, prefix: str) -> list[dict[str, object]]:
    return [
        {
            "tenant": "default",
            "id": f"{prefix}{i}",
            "row_index": 0,
            "shadow": False,
            "model": model,
            "version": 1,
            "predicted_at": at,
            "features": "{}",
            "outputs": "{}",
        }
        for i in range(n)
    ]


def ids(ws: Workspace) -> set[str]:
    p = t.prediction_rows
    with ws.engine.connect() as conn:
        return {r.id for r in conn.execute(sa.select(p.c.id))}


def test_old_rows_go_in_batches_and_rows_of_a_live_trial_stay(any_ws: Workspace) -> None:
    now = time.time()
    trial_start = now - 40 * DAY
    with any_ws.engine.begin() as conn:
        conn.execute(sa.insert(t.prediction_rows), rows(7, "a", now - 31 * DAY, "old-a"))
        conn.execute(sa.insert(t.prediction_rows), rows(2, "a", now - DAY, "new-a"))
        conn.execute(sa.insert(t.prediction_rows), rows(3, "b", now - 35 * DAY, "trial-b"))
        conn.execute(sa.insert(t.prediction_rows), rows(2, "b", now - 50 * DAY, "before-b"))
        conn.execute(
            sa.insert(t.deployments).values(
                tenant="default",
                name="b",
                mode="canary",
                version=2,
                champion=1,
                share=0.2,
                started_at=datetime.fromtimestamp(trial_start, UTC),
            )
        )
    assert delete_rows(any_ws.engine, "default", now - 30 * DAY, batch=3) == 9
    assert ids(any_ws) == {"new-a0", "new-a1", "trial-b0", "trial-b1", "trial-b2"}


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def log_some(home: Path, n: int) -> Path:
    log = PredictionLog(home, worker="r")
    log.write(
        [
            {"id": f"p{time.time_ns()}-{i}", "model": "m", "version": 1, "time": time.time(), "inputs": {}}
            for i in range(n)
        ]
    )
    log.close()
    return max((home / "predictions").glob("*.jsonl"))


def test_old_indexed_segments_go_and_unindexed_ones_stay(tmp_path: Path) -> None:
    ws = Workspace.open(Settings(home=tmp_path / "home", prediction_retention="7d"))
    home = ws.settings.home
    indexed = log_some(home, 3)
    PredictionIndex(ws.engine, home).sync()
    unindexed = log_some(home, 2)
    torn = log_some(home, 1)
    PredictionIndex(ws.engine, home).sync()
    with torn.open("ab") as fh:
        fh.write(b'{"id": "half')  # a writer killed mid-line: never answered, never indexed
    recent = log_some(home, 1)
    PredictionIndex(ws.engine, home).sync()
    for path in (indexed, unindexed, torn):
        age(path, 8 * DAY)
    # The unindexed segment had records after the offset: pretend the index never reached it.
    o = t.predlog_offsets
    with ws.engine.begin() as conn:
        conn.execute(sa.update(o).where(o.c.file == unindexed.name).values(byte_offset=0))

    report = run_retention(ws)
    assert (report.segments_deleted, report.segments_kept_unindexed) == (2, 1)
    assert not indexed.exists() and not torn.exists()
    assert unindexed.exists() and recent.exists()
    with ws.engine.connect() as conn:
        files = {r.file for r in conn.execute(sa.select(o.c.file))}
    assert indexed.name not in files and torn.name not in files
    ws.close()


def test_segments_stay_at_least_the_grace_after_their_last_write(tmp_path: Path) -> None:
    ws = Workspace.open(Settings(home=tmp_path / "home", prediction_retention="1m"))
    seg = log_some(ws.settings.home, 1)
    PredictionIndex(ws.engine, ws.settings.home).sync()
    age(seg, 600)
    assert run_retention(ws).segments_deleted == 0  # a writer may still hold it (segment_age is 1h)
    assert run_retention(ws, grace_s=60).segments_deleted == 1
    ws.close()


def test_a_writer_leaves_a_segment_older_than_its_age(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, worker="a", segment_age=0.0)
    log.write_lines([orjson.dumps({"id": "1"})])
    log.write_lines([orjson.dumps({"id": "2"})])
    log.close()
    assert len(list((tmp_path / "predictions").glob("*.jsonl"))) >= 2


def test_the_retention_setting(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).retention_seconds == 30 * DAY
    assert Settings(home=tmp_path, prediction_retention="12h").retention_seconds == 12 * 3600
    assert Settings(home=tmp_path, prediction_retention="off").retention_seconds is None
    with pytest.raises(ConfigError, match="MODELFAB_PREDICTION_RETENTION"):
        _ = Settings(home=tmp_path, prediction_retention="a month").retention_seconds


def test_retention_run_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelfab.cli.main import app

    monkeypatch.setenv("MODELFAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELFAB_PREDICTION_RETENTION", "1d")
    ws = Workspace.open(Settings())
    with ws.engine.begin() as conn:
        conn.execute(sa.insert(t.prediction_rows), rows(4, "a", time.time() - 2 * DAY, "old"))
    ws.close()
    result = CliRunner().invoke(app, ["retention", "run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows_deleted"] == 4
