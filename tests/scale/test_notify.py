"""Alias moves are pushed to servers on PostgreSQL (LISTEN/NOTIFY); SQLite servers poll."""

from __future__ import annotations

import threading
from pathlib import Path

from modelfab.serve.models.source import WorkspaceSource
from modelfab.settings import Settings
from modelfab.store import Workspace
from tests.store.test_registry import make_run, outcome


def test_alias_moves_are_pushed_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    ws = Workspace.open(Settings(home=tmp_path, database_url=pg_url))
    make_run(ws, "run1", ["a"])
    ws.registry.record_outcomes("run1", [outcome("a", "r.a", "e" * 64)])
    heard = threading.Event()
    stop = threading.Event()
    try:
        assert WorkspaceSource(ws).listen(heard.set, stop)
        assert heard.wait(10), "the listener never connected"  # it reports once on (re)connect
        heard.clear()
        ws.registry.set_alias("r.a", "challenger", 1, reason="push me")
        assert heard.wait(10), "no notification for an alias move"
    finally:
        stop.set()
        ws.close()


def test_sqlite_has_no_push_channel(ws: Workspace) -> None:
    assert WorkspaceSource(ws).listen(lambda: None, threading.Event()) is False
