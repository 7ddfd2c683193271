"""The prediction index never stalls: oversized lines are skipped and counted, the rows around them
indexed, even when one line is longer than a whole read chunk or is still being written."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from modelfab.store import Workspace
from modelfab.store import schema as t
from modelfab.traffic.index import MAX_LINE_BYTES, PredictionIndex

SECRET = "zz-secret-feature-value"


def record(pid: str, x: float = 1.0, c: str = "a") -> bytes:
    doc = {
        "id": pid,
        "model": "m",
        "version": 1,
        "time": time.time(),
        "inputs": {"x": [[x]], "c": [[c]]},
        "outputs": {"label": [0], "probabilities": [[0.5, 0.5]]},
    }
    return orjson.dumps(doc)


def giant(pid: str, size: int) -> bytes:
    return record(pid, c=SECRET + "x" * size)


def segment(home: Path, name: str = "00000000000000000001-w0-1.jsonl") -> Path:
    folder = home / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def indexed_ids(ws: Workspace) -> list[str]:
    p = t.prediction_rows
    with ws.engine.connect() as conn:
        return sorted(r.id for r in conn.execute(sa.select(p.c.id)))


def test_a_giant_line_between_good_ones_is_skipped_counted_and_logged_without_content(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    home = ws.settings.home
    lines = [record("a"), giant("big", 2 * MAX_LINE_BYTES), record("b"), record("c")]
    segment(home).write_bytes(b"\n".join(lines) + b"\n")
    index = PredictionIndex(ws.engine, home)
    with caplog.at_level(logging.WARNING, logger="modelfab.traffic"):
        assert index.sync() == 3
    assert indexed_ids(ws) == ["a", "b", "c"]
    assert index.oversized_lines == 1
    assert "over the 1048576-byte limit" in caplog.text
    assert SECRET not in caplog.text
    assert index.sync() == 0  # the offset moved past it: never read again
    assert index.oversized_lines == 1


def test_a_line_longer_than_a_whole_chunk_does_not_stall_the_segment(ws: Workspace) -> None:
    home = ws.settings.home
    path = segment(home)
    path.write_bytes(record("a") + b"\n" + giant("big", 20_000) + b"\n" + record("b") + b"\n")
    index = PredictionIndex(ws.engine, home, max_line_bytes=1024, chunk_bytes=4096)
    index.sync()
    assert indexed_ids(ws) == ["a", "b"]
    assert index.oversized_lines == 1
    assert index.offsets()[path.name] == path.stat().st_size


def test_a_giant_line_still_being_written_waits_then_is_skipped(ws: Workspace) -> None:
    home = ws.settings.home
    path = segment(home)
    big = giant("big", 20_000)
    path.write_bytes(record("a") + b"\n" + big[:10_000])  # the writer is mid-line
    index = PredictionIndex(ws.engine, home, max_line_bytes=1024, chunk_bytes=4096)
    index.sync()
    assert indexed_ids(ws) == ["a"]
    assert index.oversized_lines == 0
    with path.open("ab") as fh:
        fh.write(big[10_000:] + b"\n" + record("b") + b"\n")
    index.sync()
    assert indexed_ids(ws) == ["a", "b"]
    assert index.oversized_lines == 1


def test_a_line_over_the_limit_but_inside_a_chunk_is_skipped(ws: Workspace) -> None:
    home = ws.settings.home
    segment(home).write_bytes(b"\n".join([record("a"), giant("big", 3000), record("b")]) + b"\n")
    index = PredictionIndex(ws.engine, home, max_line_bytes=2048)
    assert index.sync() == 2
    assert index.oversized_lines == 1


def test_undecodable_lines_are_counted(ws: Workspace) -> None:
    home = ws.settings.home
    segment(home).write_bytes(b"\n".join([record("a"), b"{not json", record("b")]) + b"\n")
    index = PredictionIndex(ws.engine, home)
    assert index.sync() == 2
    assert index.unreadable_lines == 1


def test_the_line_limit_is_a_setting(tmp_path: Path) -> None:
    from modelfab.errors import ConfigError
    from modelfab.settings import Settings

    assert Settings(home=tmp_path).line_limit_bytes == MAX_LINE_BYTES
    assert Settings(home=tmp_path, prediction_line_limit="4MiB").line_limit_bytes == 4 << 20
    with pytest.raises(ConfigError, match="MODELFAB_PREDICTION_LINE_LIMIT"):
        _ = Settings(home=tmp_path, prediction_line_limit="lots").line_limit_bytes
