"""Planning: a recipe and a dataset version become one job per partition."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from modelfab.data.datasets import load_dataset
from modelfab.errors import RecipeError
from modelfab.recipe import Recipe
from modelfab.store import DatasetVersion, Workspace

__all__ = ["JobSpec", "Plan", "make_plan", "safe_name"]

ALL = "all"


@dataclass(frozen=True)
class JobSpec:
    key: str  # URL-safe partition name, unique in the run
    partition: str | None  # the partition value as text (None: the whole table)
    model: str  # {recipe}.{key}


@dataclass
class Plan:
    recipe: Recipe
    dataset: DatasetVersion
    run_id: str
    numeric: list[str]
    categorical: list[str]
    jobs: list[JobSpec]
    frame: Any = field(repr=False)
    rows: dict[str, Any] = field(repr=False)  # job key -> row positions in frame
    dropped_rows: int = 0
    alias: str = "champion"
    recipe_digest: str = ""
    target_values: Any = field(default=None, repr=False)  # the target column as an array
    matrix: Any = field(default=None, repr=False)  # all-numeric features as one float matrix, else None
    # base: the weights (artifact digest) per-partition torch models start from, and what they are
    base_weights: str | None = None
    base_lineage: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.recipe_digest = self.recipe_digest or self.recipe.digest()
        if self.target_values is None:
            self.target_values = self.frame[self.recipe.target].to_numpy()
        if self.matrix is None and not self.categorical and self.numeric:
            # Built once in the driver; jobs slice it by row positions (workers inherit or receive it once).
            self.matrix = self.frame[self.numeric].to_numpy(dtype=float, na_value=float("nan"))


def safe_name(value: str) -> str:
    """A partition value made URL-safe: ``[A-Za-z0-9._-]``, never empty."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", value).strip(".") or "_"
    return safe[:120]


def make_plan(
    ws: Workspace,
    recipe: Recipe,
    recipe_file: str = "<recipe>",
    *,
    dataset: DatasetVersion | None = None,
    only: Collection[str] | None = None,
    alias: str = "champion",
) -> Plan:
    """Plan the run. ``dataset`` overrides the recipe's (the iteration loop retrains on a newer version);
    ``only`` keeps the partitions with these keys; ``alias`` is what passing versions become."""
    dataset = dataset or ws.registry.get_dataset(recipe.dataset_name, recipe.dataset_version)
    frame = load_dataset(ws, dataset)
    numeric, categorical = _features(recipe, dataset, list(frame.columns), recipe_file)
    identity = f"{ws.registry.tenant}|{recipe.digest()}|{dataset.digest}"
    if only is not None or alias != "champion":
        identity += f"|{alias}|{','.join(sorted(only or ()))}"
    run_id = hashlib.sha256(identity.encode()).hexdigest()[:20]
    dropped = 0
    if recipe.partition_by is None:
        rows = {ALL: frame.index.to_numpy()}
        jobs = [JobSpec(ALL, None, f"{recipe.name}.{ALL}")]
    else:
        col = frame[recipe.partition_by]
        dropped = int(col.isna().sum())
        groups = frame.groupby(col.astype(str).where(col.notna()), sort=True, dropna=True).indices
        rows, jobs, used = {}, [], set()
        for value in sorted(groups):
            key = safe_name(value)
            if key in used:  # two values that differ only in unsafe characters
                key = f"{key[:110]}-{hashlib.sha1(value.encode()).hexdigest()[:8]}"
            used.add(key)
            rows[key] = groups[value]
            jobs.append(JobSpec(key, value, f"{recipe.name}.{key}"))
    if only is not None:
        wanted = set(only)
        jobs = [j for j in jobs if j.key in wanted]
    return Plan(recipe, dataset, run_id, numeric, categorical, jobs, frame, rows, dropped, alias)


def _features(
    recipe: Recipe, dataset: DatasetVersion, columns: list[str], file: str
) -> tuple[list[str], list[str]]:
    kinds = {c["name"]: c["kind"] for c in dataset.columns}
    available = ", ".join(columns)
    image = recipe.image_column if recipe.task == "image_classification" else None
    for what, col in (("target", recipe.target), ("partition_by", recipe.partition_by), ("image", image)):
        if col is not None and col not in kinds:
            raise RecipeError(
                f"field {what}: column {col!r} is not in dataset {dataset.ref}; columns are: {available}",
                file=file,
            )
    if image is not None:
        return [], []
    numeric, categorical = _tabular_features(recipe, dataset, columns, file, kinds)
    torch_mlp = [i for i, c in enumerate(recipe.candidates) if c.family == "torch_mlp"]
    if torch_mlp and categorical:
        raise RecipeError(
            f"field candidates.{torch_mlp[0]}.family: torch_mlp takes numeric features only, and "
            f"{categorical} are categorical; list numeric columns under features: or use family mlp",
            file=file,
        )
    return numeric, categorical


def _tabular_features(
    recipe: Recipe, dataset: DatasetVersion, columns: list[str], file: str, kinds: dict[str, str]
) -> tuple[list[str], list[str]]:
    available = ", ".join(columns)
    if recipe.features is not None:
        missing = [c for c in recipe.features if c not in kinds]
        if missing:
            raise RecipeError(
                f"field features: {missing} not in dataset {dataset.ref}; columns are: {available}", file=file
            )
        unusable = [c for c in recipe.features if kinds[c] == "datetime"]
        if unusable:
            raise RecipeError(
                f"field features: datetime columns are not supported yet: {unusable}", file=file
            )
        features = list(recipe.features)
    else:
        skip = {recipe.target, recipe.partition_by}
        features = [c for c in columns if c not in skip and kinds[c] != "datetime"]
    if not features:
        raise RecipeError("field features: no feature columns remain; list them under features:", file=file)
    numeric = [c for c in features if kinds[c] in ("numeric", "bool")]
    categorical = [c for c in features if kinds[c] == "categorical"]
    return numeric, categorical
