"""Recipes: what models to make, validated by pydantic, with errors that name file, line and field."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from modelfab.errors import RecipeError
from modelfab.families import (
    AUGMENTATIONS,
    FAMILIES,
    FAMILY_ALIASES,
    FAMILY_TASKS,
    IMAGE_FAMILIES,
    LR_SCHEDULES,
    OPTIMIZERS,
    TORCH_COMMON,
    TORCH_FAMILIES,
    families_for,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "LOWER_IS_BETTER",
    "REGRESSION_METRICS",
    "Base",
    "Candidate",
    "Gate",
    "IterateSpec",
    "Recipe",
    "SearchRange",
    "load_recipe",
    "parse_recipe",
]

CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class _AtField(ValueError):
    """A whole-recipe check that failed at one field: parse_recipe reports that field and its line."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchRange(_Strict):
    """A numeric range (integers when both ends are integers) or a list of choices."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchRange:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices must list at least one value")
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices: [...])")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


class Candidate(_Strict):
    family: str
    params: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, SearchRange] = Field(default_factory=dict)

    @field_validator("family")
    @classmethod
    def _family(cls, v: str) -> str:
        v = FAMILY_ALIASES.get(v, v)
        if v not in FAMILIES:
            raise ValueError(f"unknown family {v!r}; allowed: {', '.join(sorted(FAMILIES))}")
        return v

    @model_validator(mode="after")
    def _known_params(self) -> Candidate:
        allowed = FAMILIES[self.family]
        for where, keys in (("search", self.search), ("params", self.params)):
            unknown = sorted(set(keys) - allowed)
            if unknown:
                raise ValueError(
                    f"{where} names {', '.join(unknown)}, which {self.family} does not take; "
                    f"allowed: {', '.join(sorted(allowed))}"
                )
        if self.family in TORCH_FAMILIES:
            for key, value in self.params.items():
                check_torch_param(key, value)
            depth = self.params.get("depth")
            if self.family == "resnet" and isinstance(depth, int) and (depth < 8 or (depth - 2) % 6):
                raise ValueError(f"resnet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
            for key, r in self.search.items():
                for value in r.choices or ():
                    check_torch_param(key, value)
        return self


_POSITIVE_INTS = ("epochs", "batch_size", "channels", "depth", "width", "early_stopping")


def check_torch_param(key: str, value: Any) -> None:
    """Refuse a torch hyperparameter value the trainer could not use (a ValueError naming what is allowed)."""
    if key == "optimizer" and value not in OPTIMIZERS:
        raise ValueError(f"optimizer {value!r} is not known; allowed: {', '.join(OPTIMIZERS)}")
    if key == "lr_schedule" and value not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {value!r} is not known; allowed: {', '.join(LR_SCHEDULES)}")
    if key == "augment" and (not isinstance(value, list) or any(v not in AUGMENTATIONS for v in value)):
        raise ValueError(f"augment must be a list of: {', '.join(AUGMENTATIONS)}; got {value!r}")
    if key in _POSITIVE_INTS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if key == "lr" and (not isinstance(value, int | float) or value <= 0):
        raise ValueError(f"lr must be a positive number, got {value!r}")
    if key == "hidden" and (
        not isinstance(value, list) or not value or any(not isinstance(v, int) or v < 1 for v in value)
    ):
        raise ValueError(f"hidden must be a list of positive layer widths such as [64, 32], got {value!r}")


class Base(_Strict):
    """The network per-partition models adapt: another recipe's registered torch model (``model:
    NAME[@alias]``) or one job trained on every partition's data of this recipe (``train:``)."""

    model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,220}(@[A-Za-z0-9._-]+)?$")
    train: dict[str, Any] | None = None
    finetune: Literal["head", "all"] = "all"

    @model_validator(mode="after")
    def _one_source(self) -> Base:
        if (self.model is None) == (self.train is None):
            raise ValueError("give one of model: NAME[@alias] or train: {workers: N, ...}")
        if self.train is not None:
            allowed = TORCH_COMMON | {"augment", "workers", "executor"}
            unknown = sorted(set(self.train) - allowed)
            if unknown:
                raise ValueError(
                    f"train names {', '.join(unknown)}, which a base job does not take; "
                    f"allowed: {', '.join(sorted(allowed))}"
                )
            workers = self.train.get("workers", 1)
            if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
                raise ValueError(f"train.workers must be a positive integer, got {workers!r}")
            executor = self.train.get("executor", "local")
            if executor not in ("local", "ray"):
                raise ValueError(f"train.executor must be local or ray, got {executor!r}")
            for key, value in self.train.items():
                if key != "executor":
                    check_torch_param(key, value)
        return self

    @property
    def model_name(self) -> str | None:
        return None if self.model is None else self.model.split("@")[0]

    @property
    def model_alias(self) -> str:
        return self.model.split("@")[1] if self.model is not None and "@" in self.model else "champion"


class Split(_Strict):
    holdout: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 0  # the older place of the recipe's seed: used when the top-level seed is not set


class Gate(_Strict):
    min: float | None = None
    max: float | None = None
    beat_champion_by: float | None = Field(default=None, ge=0.0)


class Serving(_Strict):
    max_batch_size: int = Field(default=64, ge=1, le=65536)
    max_wait_ms: float = Field(default=2.0, ge=0.0, le=10_000.0)
    # ONNX Runtime execution providers, in order (cuda, tensorrt, openvino, cpu or ONNX Runtime's names);
    # None: the server's choice. Ones not installed where the model is served are skipped with a warning.
    # Left out of dumps when unset, so recipes without it keep their digest and their stored serving section.
    providers: list[str] | None = Field(default=None, exclude_if=lambda v: v is None)

    @field_validator("providers")
    @classmethod
    def _providers(cls, v: list[str] | None) -> list[str] | None:
        from modelfab.serve.models.providers import parse_providers

        return list(parse_providers(v)) if v else None


_DURATION_RE = r"\d+(\.\d+)?(ms|s|m|h|d)"


class Canary(_Strict):
    share: float = Field(default=0.2, gt=0.0, lt=1.0)
    min_labels: int = Field(default=100, ge=1)
    # A trial whose labels stop coming would split traffic forever; after this long without min_labels
    # it ends, the champion kept.
    timeout: str = "7d"

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: str) -> str:
        if not re.fullmatch(_DURATION_RE, str(v)) or float(re.sub(r"[a-z]+$", "", str(v))) <= 0:
            raise ValueError("timeout must be a positive duration such as 90s, 15m, 2h or 7d")
        return str(v)


class Triggers(_Strict):
    drift_psi: float | None = Field(default=0.25, gt=0.0)
    metric_drop: float | None = Field(default=0.05, ge=0.0)
    new_labels: int | None = Field(default=None, ge=1)


class IterateSpec(_Strict):
    triggers: Triggers = Field(default_factory=Triggers)
    min_samples: int = Field(default=200, ge=1)
    window: int = Field(default=2000, ge=1)
    window_time: str | None = None  # also only rows predicted within this long, e.g. 7d
    beat_champion_by: float = Field(default=0.01, ge=0.0)
    canary: Canary = Field(default_factory=Canary)
    cooldown: str = "0s"
    shadow: bool = False

    @field_validator("cooldown", "window_time")
    @classmethod
    def _duration(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not re.fullmatch(_DURATION_RE, str(v)):
            raise ValueError(f"{info.field_name} must be a duration such as 0s, 90s, 15m, 2h or 1d")
        return None if v is None else str(v)

    def since(self, now: float) -> float | None:
        """The oldest prediction time the windows may use (``window_time``), or None for no limit."""
        if self.window_time is None:
            return None
        from modelfab.units import parse_duration

        return now - parse_duration(self.window_time)


class Resources(_Strict):
    cpus: float = Field(default=1.0, gt=0.0)
    gpus: float = Field(default=0.0, ge=0.0)
    memory: str | None = None


class Distributed(_Strict):
    """One job trained by N data-parallel processes (``modelfab.factory.distributed``) instead of one."""

    workers: int = Field(default=2, ge=1, le=64)
    executor: Literal["local", "ray"] = "local"


class Recipe(_Strict):
    name: str = Field(pattern=NAME_RE)
    task: Literal["classification", "regression", "image_classification"]
    dataset: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}(@\d+)?$")
    target: str
    partition_by: str | None = None
    features: list[str] | None = None
    image: str | None = None  # image_classification: the column of encoded image bytes (default image)
    base: Base | None = None
    distributed: Distributed | None = None
    split: Split = Field(default_factory=Split)
    candidates: list[Candidate] = Field(min_length=1)
    trials: int = Field(default=1, ge=1, le=10_000)
    metric: str
    gate: Gate = Field(default_factory=Gate)
    min_rows: int = Field(default=50, ge=2)
    serving: Serving = Field(default_factory=Serving)
    iterate: IterateSpec | None = None
    resources: Resources = Field(default_factory=Resources)
    seed: int = 0  # drives the holdout split, the search and the models' random_state (see effective_seed)

    @model_validator(mode="after")
    def _families_fit_task(self) -> Recipe:
        for i, cand in enumerate(self.candidates):
            if self.task not in FAMILY_TASKS[cand.family]:
                raise _AtField(
                    ("candidates", i, "family"),
                    f"{cand.family} does not fit task {self.task}; "
                    f"allowed: {', '.join(families_for(self.task))}",
                )
        return self

    @model_validator(mode="after")
    def _image_fields(self) -> Recipe:
        if self.task == "image_classification":
            if self.features is not None:
                raise _AtField(
                    ("features",), "an image task has no feature columns: name the image column in image:"
                )
        elif self.image is not None:
            raise _AtField(
                ("image",), f"only task image_classification takes an image column, not {self.task}"
            )
        kinds = [c.family in TORCH_FAMILIES for c in self.candidates]
        if any(kinds) and not all(kinds):
            raise _AtField(
                ("candidates", kinds.index(not kinds[0]), "family"),
                "candidates mix torch and scikit-learn families; one recipe trains one kind: split it in two",
            )
        if self.base is not None:
            for i, cand in enumerate(self.candidates):
                if cand.family not in TORCH_FAMILIES:
                    raise _AtField(
                        ("candidates", i, "family"),
                        f"base: adapts torch networks, {cand.family} is not one; "
                        f"allowed: {', '.join(sorted(TORCH_FAMILIES & set(families_for(self.task))))}",
                    )
        return self

    @model_validator(mode="after")
    def _distributed_fits(self) -> Recipe:
        if self.distributed is None:
            return self
        if self.task != "image_classification" or any(
            c.family not in IMAGE_FAMILIES for c in self.candidates
        ):
            raise _AtField(("distributed",), "is for image_classification with cnn or resnet candidates")
        if self.base is not None:
            raise _AtField(
                ("distributed",),
                "does not combine with base:; train the base distributed with base: {train: {workers: N}}",
            )
        return self

    @model_validator(mode="after")
    def _one_seed(self) -> Recipe:
        if self.seed and self.split.seed and self.seed != self.split.seed:
            raise _AtField(
                ("split", "seed"),
                f"{self.split.seed} differs from seed {self.seed}; one seed drives the split, the search "
                "and the models: remove split.seed",
            )
        return self

    @model_validator(mode="after")
    def _metric_fits_task(self) -> Recipe:
        allowed = REGRESSION_METRICS if self.task == "regression" else CLASSIFICATION_METRICS
        if self.metric not in allowed:
            raise ValueError(
                f"metric {self.metric!r} does not fit task {self.task}; allowed: {', '.join(allowed)}"
            )
        if self.metric in LOWER_IS_BETTER and self.gate.min is not None:
            raise ValueError(
                f"gate.min does not fit {self.metric}, where lower is better; use gate: {{max: ...}}"
            )
        if self.metric not in LOWER_IS_BETTER and self.gate.max is not None:
            raise ValueError(
                f"gate.max does not fit {self.metric}, where higher is better; use gate: {{min: ...}}"
            )
        if self.features is not None:
            clash = {c for c in (self.target, self.partition_by) if c is not None} & set(self.features)
            if clash:
                raise ValueError(f"features must not include the target or partition column: {sorted(clash)}")
        return self

    @property
    def dataset_name(self) -> str:
        return self.dataset.split("@")[0]

    @property
    def dataset_version(self) -> int | None:
        return int(self.dataset.split("@")[1]) if "@" in self.dataset else None

    @property
    def image_column(self) -> str:
        return self.image or "image"

    @property
    def classifies(self) -> bool:
        """Whether models predict a class (tabular or image classification)."""
        return self.task != "regression"

    @property
    def effective_seed(self) -> int:
        """The one seed of the split, the search and the models: ``seed``, or ``split.seed`` where a
        recipe (or a run stored before ``seed`` was honoured) gives only that."""
        return self.seed or self.split.seed

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    def digest(self) -> str:
        """Stable sha256 of the recipe's content (not its formatting)."""
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecipeError("recipe file not found; check the path", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe: {exc}", file=str(path)) from None
    return parse_recipe(text, file=str(path))


def parse_recipe(text: str, file: str = "<recipe>") -> Recipe:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"malformed YAML: {problem}", file=file, line=line) from None
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a YAML mapping of fields (name:, task:, ...)", file=file, line=1)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        located = err.get("ctx", {}).get("error")
        if isinstance(located, _AtField):
            loc += list(located.loc)
        field = ".".join(str(p) for p in loc) or "(recipe)"
        msg = _message(err, field)
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise RecipeError(f"field {field}: {msg}{more}", file=file, line=_line_of(node, loc)) from None


def _message(err: Any, field: str) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field; remove it or check its spelling"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"{err['msg'].lower()}, got {err.get('input')!r}"
    if kind == "string_pattern_mismatch":
        return f"{err.get('input')!r} is not allowed: use letters, digits, '.', '_' or '-'"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _line_of(node: Any, loc: list[Any]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or its nearest parent that exists)."""
    import yaml

    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for key, value in node.value:
                if key.value == part:
                    line = key.start_mark.line + 1
                    nxt = value
                    break
            if nxt is None:
                return line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
