"""Datasets: immutable, content-addressed versions of imported tables."""

from __future__ import annotations

from modelfab.data.datasets import import_dataset, import_frame, load_dataset, read_table
from modelfab.data.prune import PruneReport, prune_dataset

__all__ = ["PruneReport", "import_dataset", "import_frame", "load_dataset", "prune_dataset", "read_table"]
