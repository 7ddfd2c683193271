"""The Alembic migrations build exactly the schema the code declares, on both databases."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from modelfab.errors import ConfigError
from modelfab.store.db import HEAD_REVISION, create_engine, current_revision, migrate
from modelfab.store.schema import metadata


def test_migrations_match_declared_schema(db_url: str, tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(db_url)
    migrate(engine, tmp_path)
    migrate(engine, tmp_path)  # a second start is a no-op
    assert current_revision(engine) == HEAD_REVISION
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_busy_timeout(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    engine.dispose()


def test_bad_database_url_is_a_clear_error() -> None:
    import pytest

    with pytest.raises(ConfigError, match="not a database URL"):
        create_engine("not a url at all")
    try:
        create_engine("postgresql+nodriver://u:hunter2@h/db")
    except ConfigError as exc:
        assert "hunter2" not in str(exc)
    except sa.exc.NoSuchModuleError:
        pass
