"""Loop leadership: one loop process acts on a recipe's models at a time.

On PostgreSQL the leader holds a session-level advisory lock per recipe on a connection it keeps open
(keyed by schema, tenant and recipe: advisory locks are database-wide, registries may share a database); on
SQLite it holds an exclusive ``flock`` on a file next to the database. Either way the operating system or
the database server drops the lock when the process dies, so a standby loop takes over at its next pass
without any lease to expire. The ``loop_leaders`` table records who leads, for people reading it.

A leader checks its lock at the start of every pass; a leader cut off from PostgreSQL mid-pass can finish
that pass while a standby starts (each step is one transaction and re-reads the state, so the worst case
is a decision the standby would have made too).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from modelfab.store import schema as t
from modelfab.store.db import write_tx

__all__ = ["Leadership", "current_leaders"]


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership:
    """Which recipes this process leads. ``hold(recipe)`` takes the lead when it is free and answers
    whether this process leads now; ``release()`` gives every lead back."""

    def __init__(self, engine: Engine, tenant: str, lock_dir: Path) -> None:
        self.engine = engine
        self.tenant = tenant
        self.holder = _holder()
        self._pg = engine.dialect.name == "postgresql"
        self._conn: Connection | None = None
        self._files: dict[str, int] = {}
        self._held: set[str] = set()
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        if database and database != ":memory:":
            self.lock_dir = Path(database).absolute().parent / ".loop-locks"
        else:
            self.lock_dir = lock_dir / ".loop-locks"

    def _key(self, recipe: str) -> str:
        return f"loop|{self.tenant}|{recipe}"

    def hold(self, recipe: str) -> bool:
        held = self._check_pg(recipe) if self._pg else self._check_file(recipe)
        if held and recipe not in self._held:
            self._held.add(recipe)
            self._announce(recipe)
        elif not held:
            self._held.discard(recipe)
        return held

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    def release(self) -> None:
        self._held.clear()
        for fd in self._files.values():
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._files.clear()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # a dead connection has dropped its locks already
                conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))
            conn.close()

    # ------------------------------------------------------------------ PostgreSQL
    def _check_pg(self, recipe: str) -> bool:
        key = {"k": self._key(recipe)}
        try:
            conn = self._session()
            got = bool(
                conn.execute(
                    sa.text("SELECT pg_try_advisory_lock(hashtextextended(current_schema() || :k, 0))"), key
                ).scalar()
            )
            if got and recipe in self._held:
                # Session locks stack: the probe took it a second time; keep exactly one hold.
                conn.execute(
                    sa.text("SELECT pg_advisory_unlock(hashtextextended(current_schema() || :k, 0))"), key
                )
            return got
        except sa.exc.DBAPIError:
            # The session is gone and its locks with it: start again on a new one next time.
            self._held.clear()
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.invalidate()
                    self._conn.close()
                self._conn = None
            return False

    def _session(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    # ------------------------------------------------------------------ SQLite (and any local file)
    def _check_file(self, recipe: str) -> bool:
        if recipe in self._files:
            return True
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(self._key(recipe).encode()).hexdigest()[:24]
        fd = os.open(self.lock_dir / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._files[recipe] = fd
        return True

    def _announce(self, recipe: str) -> None:
        lead = t.loop_leaders
        with write_tx(self.engine) as conn:
            conn.execute(sa.delete(lead).where(lead.c.tenant == self.tenant, lead.c.recipe == recipe))
            conn.execute(
                sa.insert(lead).values(
                    tenant=self.tenant, recipe=recipe, holder=self.holder, since=datetime.now(UTC)
                )
            )


def current_leaders(engine: Engine, tenant: str) -> dict[str, str]:
    """recipe -> the holder (``host:pid``) that last took the lead."""
    lead = t.loop_leaders
    with engine.connect() as conn:
        rows = conn.execute(sa.select(lead.c.recipe, lead.c.holder).where(lead.c.tenant == tenant))
        return {r.recipe: r.holder for r in rows}
