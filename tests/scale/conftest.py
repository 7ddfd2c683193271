"""Scale-out fixtures: workspaces on PostgreSQL shared by real subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from modelfab.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MODELFAB = [sys.executable, "-m", "modelfab.cli.main"]


@pytest.fixture
def pg_settings(tmp_path: Path, pg_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=pg_url)


def env_for(settings: Settings) -> dict[str, str]:
    """The environment a subprocess needs to open the same workspace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFAB_")}
    env.update(MODELFAB_HOME=str(settings.home), PYTHONPATH=str(ROOT))
    if settings.database_url:
        env["MODELFAB_DATABASE_URL"] = settings.database_url
    return env
