"""Prediction data sealed at rest: with a key no feature value is stored in plain text, in log files or in
database rows; readers still get the values back; a wrong or missing key is refused with a clear error."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from modelfab.errors import EncryptionError
from modelfab.iterate.window import labelled_rows, recent_rows
from modelfab.settings import Settings
from modelfab.store import Workspace
from modelfab.store import schema as t
from modelfab.traffic import sealing
from modelfab.traffic.feedback import FeedbackItem, FeedbackStore
from modelfab.traffic.index import PredictionIndex
from modelfab.traffic.predlog import PredictionLog, new_prediction_id, read_predictions

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
SECRET = "zz-plan-secret"
SECRET_NUMBER = 12345.678


def write(home: Path, n: int, key: bytes | None = None, **kw: object) -> list[str]:
    log = PredictionLog(home, worker="t", key=key, **kw)  # type: ignore[arg-type]
    ids = [new_prediction_id() for _ in range(n)]
    log.write(
        [
            {
                "id": pid,
                "model": "m",
                "version": 1,
                "time": time.time(),
                "inputs": {
                    "spend": np.full((2, 1), SECRET_NUMBER, dtype=np.float64),
                    "plan": np.array([[SECRET], [SECRET]], dtype=object),
                },
                "outputs": {"label": np.zeros(2, dtype=np.int64), "probabilities": np.full((2, 2), 0.5)},
            }
            for pid in ids
        ]
    )
    log.close()
    return ids


@pytest.fixture
def sealed_ws(tmp_path: Path) -> Workspace:
    w = Workspace.open(Settings(home=tmp_path / "home", encryption_key=KEY.hex()))
    yield w  # type: ignore[misc]
    w.close()


def plain_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (home / "predictions").iterdir())


def test_with_a_key_logs_and_rows_hold_no_plain_feature_value_and_readers_work(sealed_ws: Workspace) -> None:
    home = sealed_ws.settings.home
    ids = write(home, 20)  # the key comes from the workspace opened for this home
    raw = plain_bytes(home)
    assert SECRET.encode() not in raw and b"12345.678" not in raw
    segments = b"".join(p.read_bytes() for p in (home / "predictions").glob("*.jsonl"))
    assert segments and all(line.startswith(b"!") for line in segments.splitlines())
    assert {r["id"] for r in read_predictions(home)} == set(ids)

    index = PredictionIndex(sealed_ws.engine, home)
    assert index.sync() == 40
    p = t.prediction_rows
    with sealed_ws.engine.connect() as conn:
        stored = [" ".join(str(v) for v in r) for r in conn.execute(sa.select(p))]
    assert stored and not any(SECRET in s or "12345.678" in s for s in stored)
    db_file = home / "registry.db"
    sealed_ws.engine.dispose()
    assert SECRET.encode() not in db_file.read_bytes()

    FeedbackStore(sealed_ws.engine, "default", index).ingest([FeedbackItem(ids[0], 1, "1")])
    rows = recent_rows(sealed_ws.engine, "default", [("m", 1)], window=100)[("m", 1)]
    feats = rows.features()
    assert len(feats) == 40 and all(f == {"spend": SECRET_NUMBER, "plan": SECRET} for f in feats)
    assert labelled_rows(sealed_ws.engine, "default", "m", 10).features() == [
        {"spend": SECRET_NUMBER, "plan": SECRET}
    ]


def test_a_wrong_key_is_refused_by_writers_and_readers(sealed_ws: Workspace) -> None:
    home = sealed_ws.settings.home
    write(home, 2)
    with pytest.raises(EncryptionError, match="another key"):
        PredictionLog(home, key=OTHER)
    with pytest.raises(EncryptionError, match="another key"):
        list(read_predictions(home, key=OTHER))
    with pytest.raises(EncryptionError, match="another key"):
        PredictionIndex(sealed_ws.engine, home, key=OTHER).sync()
    PredictionIndex(sealed_ws.engine, home).sync()
    rows = recent_rows(sealed_ws.engine, "default", [("m", 1)], window=10)[("m", 1)]
    rows.key = OTHER
    with pytest.raises(EncryptionError, match="key is wrong"):
        rows.features()
    rows.key = None
    with pytest.raises(EncryptionError, match="no key is set"):
        rows.features()


def test_a_sealed_log_without_a_key_is_refused(tmp_path: Path) -> None:
    write(tmp_path, 1, key=KEY)
    with pytest.raises(EncryptionError, match="no key is set"):
        PredictionLog(tmp_path)
    with pytest.raises(EncryptionError, match="no key is set"):
        list(read_predictions(tmp_path))


def test_plain_lines_written_before_the_key_are_still_read(tmp_path: Path) -> None:
    before = write(tmp_path, 2)
    after = write(tmp_path, 2, key=KEY)
    assert [r["id"] for r in read_predictions(tmp_path, key=KEY)] == before + after


def test_an_altered_sealed_line_is_skipped_and_counted(sealed_ws: Workspace) -> None:
    home = sealed_ws.settings.home
    write(home, 3)
    (path,) = (home / "predictions").glob("*.jsonl")
    lines = path.read_bytes().splitlines()
    lines[1] = lines[1][:-8] + (b"AAAAAAAA" if not lines[1].endswith(b"AAAAAAAA") else b"BBBBBBBB")
    path.write_bytes(b"\n".join(lines) + b"\n")
    index = PredictionIndex(sealed_ws.engine, home)
    assert index.sync() == 4
    assert index.unreadable_lines == 1


def test_nonces_never_repeat_within_a_sealer_or_across_a_fork() -> None:
    sealer = sealing.Sealer(KEY)
    nonces = {sealer.seal(b"x", b"")[:12] for _ in range(1000)}
    assert len(nonces) == 1000
    read, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, sealer.seal(b"x", b"")[:12])
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 12)
    assert child[:8] != sealer.seal(b"x", b"")[:8]
    assert child not in nonces
