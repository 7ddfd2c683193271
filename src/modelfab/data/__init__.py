"""Datasets: immutable, content-addressed versions of imported tables."""

from __future__ import annotations

from modelfab.data.datasets import import_dataset, load_dataset, read_table

__all__ = ["import_dataset", "load_dataset", "read_table"]
