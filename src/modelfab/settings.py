"""Settings from the environment (prefix ``MODELFAB_``) with defaults for a laptop."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Where state lives and how to reach it.

    All state lives under ``home`` unless ``database_url`` or ``artifact_url`` point elsewhere.
    """

    model_config = SettingsConfigDict(env_prefix="MODELFAB_", extra="ignore")

    home: Path = Field(default=Path(".modelfab"), description="workspace folder")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in home")
    artifact_url: str | None = Field(default=None, description="fsspec URL of the artifact store")
    encryption_key: str | None = Field(
        default=None, repr=False, description="AES-256 key: 64 hex chars or base64 of 32 bytes"
    )
    encryption_key_file: Path | None = Field(default=None, description="file holding the key")
    tenant: str = Field(default="default")
    executor: str = Field(default="local", description="local (process pool) or ray")
    ray_address: str | None = Field(
        default=None, description="Ray cluster HOST:PORT; default: start Ray locally"
    )
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1)
    prediction_retention: str = Field(
        default="30d", description="how long prediction logs and indexed rows are kept (e.g. 30d, 12h; off)"
    )
    prediction_line_limit: str = Field(
        default="1MiB", description="longest prediction log line the index reads; longer ones are skipped"
    )
    dataset_keep: int | None = Field(
        default=None, ge=1, description="retention also prunes each dataset to its newest N versions"
    )

    @property
    def retention_seconds(self) -> float | None:
        """The prediction retention in seconds, or None when it is ``off``."""
        from modelfab.errors import ConfigError
        from modelfab.units import parse_duration

        text = self.prediction_retention.strip().lower()
        if text in ("off", "none", "forever"):
            return None
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise ConfigError(f"MODELFAB_PREDICTION_RETENTION: {exc}, or off") from None
        if seconds <= 0:
            raise ConfigError("MODELFAB_PREDICTION_RETENTION: must be longer than 0s; write off to keep all")
        return seconds

    @property
    def line_limit_bytes(self) -> int:
        from modelfab.errors import ConfigError
        from modelfab.units import parse_bytes

        try:
            limit = parse_bytes(self.prediction_line_limit)
        except ConfigError as exc:
            raise ConfigError(f"MODELFAB_PREDICTION_LINE_LIMIT: {exc}") from None
        if limit < 1024:
            raise ConfigError("MODELFAB_PREDICTION_LINE_LIMIT: must be at least 1KiB")
        return limit

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'registry.db').absolute()}"

    @cached_property
    def resolved_artifact_url(self) -> str:
        if self.artifact_url:
            return self.artifact_url
        return str((self.home / "artifacts").absolute())

    def key_bytes(self) -> bytes | None:
        """The encryption key as 32 bytes, or None when encryption is off."""
        from modelfab.store.crypto import parse_key

        if self.encryption_key:
            return parse_key(self.encryption_key, source="MODELFAB_ENCRYPTION_KEY")
        if self.encryption_key_file is not None:
            from modelfab.errors import EncryptionError

            try:
                text = self.encryption_key_file.read_text().strip()
            except OSError as exc:
                raise EncryptionError(
                    f"cannot read key file {self.encryption_key_file}: {exc.strerror}; "
                    "fix MODELFAB_ENCRYPTION_KEY_FILE"
                ) from None
            return parse_key(text, source=str(self.encryption_key_file))
        return None
