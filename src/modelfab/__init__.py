"""modelfab: produce models in batch, serve them over Open Inference Protocol v2, iterate them.

Everything documented is importable from here; heavy libraries load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelfab._lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "ArtifactStore",
    "ConfigError",
    "ConflictError",
    "DataError",
    "DatasetVersion",
    "EncryptionError",
    "IntegrityError",
    "InvalidInputError",
    "ModelVersion",
    "ModelfabError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "Recipe",
    "RecipeError",
    "Registry",
    "RunReport",
    "Settings",
    "TrainingError",
    "UnavailableError",
    "Workspace",
    "__version__",
    "import_dataset",
    "load_recipe",
    "parse_recipe",
    "produce",
]

from modelfab.errors import (
    ConfigError,
    ConflictError,
    DataError,
    EncryptionError,
    IntegrityError,
    InvalidInputError,
    ModelfabError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RecipeError,
    TrainingError,
    UnavailableError,
)
from modelfab.settings import Settings

if TYPE_CHECKING:
    from modelfab.data import import_dataset
    from modelfab.factory import RunReport, produce
    from modelfab.recipe import Recipe, load_recipe, parse_recipe
    from modelfab.store import ArtifactStore, DatasetVersion, ModelVersion, Registry, Workspace

_LAZY = {
    "import_dataset": "modelfab.data",
    "RunReport": "modelfab.factory",
    "produce": "modelfab.factory",
    "Recipe": "modelfab.recipe",
    "load_recipe": "modelfab.recipe",
    "parse_recipe": "modelfab.recipe",
    "ArtifactStore": "modelfab.store",
    "DatasetVersion": "modelfab.store",
    "ModelVersion": "modelfab.store",
    "Registry": "modelfab.store",
    "Workspace": "modelfab.store",
}


__getattr__ = lazy_exports("modelfab", _LAZY)
