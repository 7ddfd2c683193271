"""A workspace: the registry and artifact store that one ``MODELFAB_HOME`` (or URL pair) names."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from modelfab.settings import Settings
from modelfab.store import keys
from modelfab.store.artifacts import ArtifactStore
from modelfab.store.db import create_engine, migrate
from modelfab.store.registry import Registry

__all__ = ["Workspace"]


@dataclass
class Workspace:
    settings: Settings
    engine: Engine
    registry: Registry
    artifacts: ArtifactStore

    @classmethod
    def open(cls, settings: Settings | None = None) -> Workspace:
        """Open (creating and migrating when needed) the workspace the settings name."""
        settings = settings or Settings()
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings.resolved_database_url)
        migrate(engine, lock_dir=settings.home)
        key = settings.key_bytes()
        artifacts = ArtifactStore(settings.resolved_artifact_url, key)
        keys.remember(settings.home, engine, key)
        return cls(settings, engine, Registry(engine, settings.tenant), artifacts)

    def close(self) -> None:
        self.engine.dispose()
