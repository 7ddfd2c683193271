"""Recipes: the issue's example works as written; bad recipes name file, line, field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfab.errors import RecipeError
from modelfab.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parent.parent

BASE = """name: churn
task: classification
dataset: churn
target: churned
candidates:
  - family: logistic_regression
metric: roc_auc
"""


def test_example_recipe_as_written() -> None:
    r = load_recipe(ROOT / "examples" / "churn.yaml")
    assert (r.name, r.task, r.dataset_name, r.partition_by, r.trials, r.metric, r.min_rows) == (
        "churn",
        "classification",
        "churn",
        "site",
        8,
        "roc_auc",
        50,
    )
    assert r.gate.min == 0.6 and r.split.holdout == 0.2 and r.split.seed == 7
    depth = r.candidates[1].search["max_depth"]
    assert depth.is_int and not r.candidates[1].search["learning_rate"].is_int
    assert r.candidates[1].search["learning_rate"].log
    assert load_recipe(ROOT / "examples" / "quickstart.yaml").iterate is not None


def test_digest_ignores_formatting() -> None:
    a = parse_recipe(BASE)
    b = parse_recipe(BASE.replace("metric: roc_auc", "metric:   roc_auc   # same"))
    c = parse_recipe(BASE.replace("roc_auc", "accuracy"))
    assert a.digest() == b.digest() != c.digest()


def test_dataset_version_pin() -> None:
    r = parse_recipe(BASE.replace("dataset: churn", "dataset: churn@3"))
    assert (r.dataset_name, r.dataset_version) == ("churn", 3)


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("name: x\ntask: [\n", 3, "malformed YAML"),
        ("- just\n- a list\n", 1, "YAML mapping"),
        (BASE + "bogus: 1\n", 8, "field bogus: unknown field"),
        (BASE.replace("task: classification", "task: clustering"), 2, "field task: input should be"),
        (
            BASE.replace("family: logistic_regression", "family: forest"),
            6,
            "allowed: cnn, hist_gradient_boosting",
        ),
        (BASE + "trials: many\n", 8, "field trials"),
        (BASE.replace("metric: roc_auc", "metric: rmse"), 1, "does not fit task classification"),
        (BASE.replace("target: churned\n", ""), 1, "field target: required field is missing"),
        (BASE + "split: {holdout: 1.5}\n", 8, "field split.holdout"),
        (BASE + "gate: {min: 0.5}\n".replace("min", "max"), 1, "gate.max does not fit roc_auc"),
        (
            BASE.replace(
                "  - family: logistic_regression", "  - family: mlp\n    search: {C: {low: 1, high: 2}}"
            ),
            6,
            "which mlp does not take",
        ),
        (
            BASE.replace(
                "  - family: logistic_regression", "  - family: mlp\n    search: {alpha: {low: 2, high: 1}}"
            ),
            7,
            "must not exceed",
        ),
        (BASE.replace("name: churn", "name: ../etc"), 1, "field name"),
        (BASE + "iterate: {cooldown: soon}\n", 8, "cooldown must be a duration"),
        (BASE + "features: [churned]\n", 1, "must not include the target"),
        (
            BASE.replace("task: classification", "task: regression").replace("roc_auc", "rmse"),
            6,
            "field candidates.0.family: logistic_regression does not fit task regression; "
            "allowed: hist_gradient_boosting, linear_regression, mlp, random_forest, torch_mlp",
        ),
        (
            BASE.replace("  - family: logistic_regression", "  - family: mlp\n  - family: ridge"),
            7,
            "field candidates.1.family: linear_regression does not fit task classification; "
            "allowed: hist_gradient_boosting, logistic_regression, mlp, random_forest, torch_mlp",
        ),
        (BASE + "seed: 4\nsplit: {seed: 5}\n", 9, "field split.seed: 5 differs from seed 4"),
    ],
)
def test_bad_recipes(text: str, line: int, needle: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, file="bad.yaml")
    message = str(info.value)
    assert message.startswith(f"bad.yaml:{line}: "), message
    assert needle.lower() in message.lower(), message


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("family", ["random_forest", "hist_gradient_boosting", "mlp", "torch_mlp"])
def test_families_for_both_tasks_parse_for_both(family: str) -> None:
    text = BASE.replace("logistic_regression", family)
    assert parse_recipe(text).candidates[0].family == family
    text = text.replace("task: classification", "task: regression").replace("roc_auc", "r2")
    regression = parse_recipe(text)
    assert regression.candidates[0].family == family


@pytest.mark.parametrize(
    ("extra", "seed"),
    [("", 0), ("seed: 11\n", 11), ("split: {seed: 7}\n", 7), ("seed: 11\nsplit: {seed: 11}\n", 11)],
)
def test_one_seed(extra: str, seed: int) -> None:
    recipe = parse_recipe(BASE + extra)
    assert recipe.effective_seed == seed
    # The recipe as stored with a run reads back with the same seed.
    assert type(recipe).model_validate(recipe.model_dump(mode="json")).effective_seed == seed


IMAGES = """name: cams
task: image_classification
dataset: cams
target: label
partition_by: camera
candidates:
  - family: resnet
    params: {depth: 8, width: 8, epochs: 2, optimizer: sgd, lr_schedule: step, augment: [flip, crop]}
metric: accuracy
"""


def test_image_recipe_with_torch_params_and_base() -> None:
    r = parse_recipe(IMAGES + "base: {model: global.all@v2, finetune: head}\n")
    assert (r.task, r.image_column, r.classifies, r.candidates[0].family) == (
        "image_classification",
        "image",
        True,
        "resnet",
    )
    assert r.base is not None and (r.base.model_name, r.base.model_alias, r.base.finetune) == (
        "global.all",
        "v2",
        "head",
    )
    trained = parse_recipe(IMAGES + "base: {train: {workers: 2, epochs: 1}}\n")
    assert trained.base is not None and trained.base.train == {"workers": 2, "epochs": 1}
    assert trained.base.finetune == "all"


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            IMAGES.replace("family: resnet", "family: logistic_regression").split("    params")[0]
            + "metric: accuracy\n",
            7,
            "field candidates.0.family: logistic_regression does not fit task image_classification; "
            "allowed: cnn, resnet",
        ),
        (IMAGES.replace("depth: 8", "hidden: [8]"), 7, "params names hidden, which resnet does not take"),
        (IMAGES.replace("depth: 8", "depth: 9"), 7, "resnet depth must be 6n+2"),
        (
            IMAGES.replace("optimizer: sgd", "optimizer: lbfgs"),
            7,
            "optimizer 'lbfgs' is not known; allowed: adam",
        ),
        (IMAGES.replace("flip, crop", "flip, rotate"), 7, "augment must be a list of: flip, crop, color"),
        (IMAGES.replace("epochs: 2", "epochs: 0"), 7, "epochs must be a positive integer"),
        (
            IMAGES + "base: {model: g.all, finetune: partial}\n",
            10,
            "field base.finetune: input should be 'head' or 'all'",
        ),
        (IMAGES + "base: {finetune: head}\n", 10, "give one of model: NAME[@alias] or train:"),
        (IMAGES + "base: {train: {workers: 2, hidden: [3]}}\n", 10, "train names hidden"),
        (IMAGES + "features: [a]\n", 10, "field features: an image task has no feature columns"),
        (IMAGES.replace("metric: accuracy", "metric: rmse"), 1, "does not fit task image_classification"),
        (BASE + "image: pixels\n", 8, "field image: only task image_classification takes an image column"),
        (
            BASE.replace(
                "  - family: logistic_regression", "  - family: torch_mlp\n    params: {augment: [flip]}"
            ),
            6,
            "params names augment, which torch_mlp does not take",
        ),
        (
            BASE.replace("  - family: logistic_regression", "  - family: torch_mlp\n  - family: mlp"),
            7,
            "field candidates.1.family: candidates mix torch and scikit-learn families",
        ),
        (BASE + "base: {model: g.all}\n", 6, "base: adapts torch networks, logistic_regression is not one"),
    ],
)
def test_bad_torch_recipes(text: str, line: int, needle: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, file="bad.yaml")
    message = str(info.value)
    assert message.startswith(f"bad.yaml:{line}: "), message
    assert needle.lower() in message.lower(), message


def test_a_distributed_base_names_a_known_executor() -> None:
    image = (
        "name: c\ntask: image_classification\ndataset: d\ntarget: label\npartition_by: camera\n"
        "candidates: [{family: cnn}]\nmetric: accuracy\n"
    )
    ok = parse_recipe(image + "base: {train: {workers: 2, executor: ray}}\n")
    assert ok.base is not None and ok.base.train == {"workers": 2, "executor": "ray"}
    with pytest.raises(RecipeError, match=r"train\.executor must be local or ray"):
        parse_recipe(image + "base: {train: {workers: 2, executor: spark}}\n")
