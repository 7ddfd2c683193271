"""Datasets: immutable, content-addressed versions of imported tables (image datasets included)."""

from __future__ import annotations

from modelfab.data.datasets import import_dataset, import_frame, load_dataset, read_table
from modelfab.data.images import decode_images, encode_png
from modelfab.data.prune import PruneReport, prune_dataset

__all__ = [
    "PruneReport",
    "decode_images",
    "encode_png",
    "import_dataset",
    "import_frame",
    "load_dataset",
    "prune_dataset",
    "read_table",
]
