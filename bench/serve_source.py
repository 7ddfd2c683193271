"""A modelfab ModelSource over a benchmark registry folder (``MODELFAB_HOME/bench_registry``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfab.errors import IntegrityError, NotFoundError


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    artifact_digest: str
    artifact_size: int
    aliases: list[str] = field(default_factory=list)
    serving: dict[str, Any] = field(default_factory=dict)


class FolderSource:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.versions = {
            row["name"]: Version(row["name"], 1, row["digest"], row["size"], row["aliases"], row["serving"])
            for row in json.loads((folder / "index.json").read_text())
        }

    def resolve(self, name: str, ref: str | int | None) -> Version:
        v = self.versions.get(name)
        if v is None or ref not in (None, 1, "champion"):
            raise NotFoundError(f"no model {name!r} version {ref!r}")
        return v

    def fetch(self, digest: str) -> bytes:
        data = (self.folder / digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"artifact {digest[:12]} does not match its sha256")
        return data

    def index(self) -> list[Version]:
        return list(self.versions.values())

    def generation(self) -> int:
        # The folder never changes while a benchmark runs, like a workspace whose aliases stay put.
        return 0


def folder_source(settings: Any) -> FolderSource:
    return FolderSource(Path(settings.home) / "bench_registry")
