"""Registry (SQL) and artifact store (fsspec) behind one workspace handle."""

from __future__ import annotations

from modelfab.store.artifacts import Artifact, ArtifactStore
from modelfab.store.records import AliasEvent, DatasetVersion, JobOutcome, ModelVersion, RunSummary
from modelfab.store.registry import Registry
from modelfab.store.workspace import Workspace

__all__ = [
    "AliasEvent",
    "Artifact",
    "ArtifactStore",
    "DatasetVersion",
    "JobOutcome",
    "ModelVersion",
    "Registry",
    "RunSummary",
    "Workspace",
]
