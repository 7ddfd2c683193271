"""The key each workspace opened in this process seals with, found again from its home or its engine.

The server's prediction log, the index the feedback route keeps and the loop's windows are built from a
home folder or a database engine rather than from Settings; every server worker and loop opens the
workspace first, and :meth:`Workspace.open` leaves the key here. A key passed explicitly always wins.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

from sqlalchemy.engine import Engine

__all__ = ["for_engine", "for_home", "remember"]

_lock = threading.Lock()
_homes: dict[str, bytes | None] = {}
_engines: weakref.WeakKeyDictionary[Engine, bytes | None] = weakref.WeakKeyDictionary()


def _home(home: Path | str) -> str:
    return str(Path(home).resolve())


def remember(home: Path | str, engine: Engine, key: bytes | None) -> None:
    with _lock:
        _homes[_home(home)] = key
        _engines[engine] = key


def for_home(home: Path | str) -> bytes | None:
    with _lock:
        return _homes.get(_home(home))


def for_engine(engine: Engine) -> bytes | None:
    with _lock:
        return _engines.get(engine)
