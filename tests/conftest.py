"""Fixtures every subsystem's tests share: workspaces on SQLite and PostgreSQL, small generated data."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from modelfab.settings import Settings
from modelfab.store import Workspace

PG_SERVER = os.environ.get("MODELFAB_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("MODELFAB_") and var != "MODELFAB_TEST_POSTGRES":
            monkeypatch.delenv(var)


_PG_DOWN: list[str] = []  # why PostgreSQL cannot be reached, once known


def _require_postgres(admin: sa.Engine) -> None:
    """Skip (or, with MODELFAB_TEST_REQUIRE_POSTGRES=1 as CI sets it, fail) when no server answers."""
    if not _PG_DOWN:
        try:
            with admin.connect():
                _PG_DOWN.append("")
        except sa.exc.OperationalError as exc:
            _PG_DOWN.append(str(exc).splitlines()[0])
    if _PG_DOWN[0]:
        why = f"no PostgreSQL at {admin.url.render_as_string()} ({_PG_DOWN[0]}); set MODELFAB_TEST_POSTGRES"
        if os.environ.get("MODELFAB_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"mf_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_SERVER)
    _require_postgres(admin)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_SERVER}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def ws(settings: Settings) -> Iterator[Workspace]:
    w = Workspace.open(settings)
    yield w
    w.close()


@pytest.fixture
def any_ws(tmp_path: Path, db_url: str) -> Iterator[Workspace]:
    """The same workspace API on SQLite and on PostgreSQL."""
    w = Workspace.open(Settings(home=tmp_path / "home", database_url=db_url))
    yield w
    w.close()
