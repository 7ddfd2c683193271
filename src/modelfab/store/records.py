"""Plain records the registry returns and accepts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["AliasEvent", "DatasetVersion", "JobOutcome", "ModelVersion", "RunSummary"]


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: int
    digest: str
    data_digest: str
    rows: int
    columns: list[dict[str, Any]]
    source: str
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    status: str
    partition: str | None
    recipe: str | None
    run_id: str | None
    metric: str | None
    score: float | None
    metrics: dict[str, Any]
    params: dict[str, Any]
    lineage: dict[str, Any]
    signature: dict[str, Any]
    serving: dict[str, Any]
    artifact_digest: str
    artifact_size: int
    profile_digest: str | None
    created_at: datetime
    aliases: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "partition": self.partition,
            "recipe": self.recipe,
            "run_id": self.run_id,
            "aliases": self.aliases,
            "metric": self.metric,
            "score": self.score,
            "metrics": self.metrics,
            "params": self.params,
            "lineage": self.lineage,
            "signature": self.signature,
            "serving": self.serving,
            "artifact_digest": self.artifact_digest,
            "artifact_size": self.artifact_size,
            "profile_digest": self.profile_digest,
            "created_at": self.created_at.isoformat(),
        }


@dataclass
class JobOutcome:
    """What one finished job hands the registry. ``artifact_digest`` is None when training failed."""

    key: str
    partition: str | None
    model: str
    status: str  # passed | rejected | failed
    reason: str | None = None
    recipe: str | None = None
    metric: str | None = None
    score: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    signature: dict[str, Any] = field(default_factory=dict)
    serving: dict[str, Any] = field(default_factory=dict)
    artifact_digest: str | None = None
    artifact_size: int = 0
    profile_digest: str | None = None
    promote: bool = False


@dataclass(frozen=True)
class RunSummary:
    id: str
    recipe: str
    dataset: str
    status: str
    priority: str
    total: int
    counts: dict[str, int]
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "recipe": self.recipe,
            "dataset": self.dataset,
            "status": self.status,
            "priority": self.priority,
            "total": self.total,
            "counts": self.counts,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class AliasEvent:
    name: str
    alias: str
    version: int | None
    previous: int | None
    actor: str
    reason: str
    time: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alias": self.alias,
            "version": self.version,
            "previous": self.previous,
            "actor": self.actor,
            "reason": self.reason,
            "time": self.time.isoformat(),
        }
