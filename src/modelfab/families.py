"""Model families a recipe may name, and the hyperparameters each one accepts.

Kept free of heavy imports: recipes are validated against this table before scikit-learn or torch loads.
"""

from __future__ import annotations

__all__ = [
    "AUGMENTATIONS",
    "FAMILIES",
    "FAMILY_ALIASES",
    "FAMILY_TASKS",
    "IMAGE_FAMILIES",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "TORCH_COMMON",
    "TORCH_FAMILIES",
    "families_for",
]

# Hyperparameters every torch family takes: the training loop's, not the architecture's.
TORCH_COMMON = frozenset({"epochs", "batch_size", "optimizer", "lr", "lr_schedule", "early_stopping"})
# Image families also take augmentations; torch_mlp (tabular) does not.
_IMAGE_COMMON = TORCH_COMMON | {"augment"}

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "step")
AUGMENTATIONS = ("flip", "crop", "color")

# family -> hyperparameters a recipe may set or search
FAMILIES: dict[str, frozenset[str]] = {
    "logistic_regression": frozenset({"C", "max_iter", "l1_ratio"}),
    "linear_regression": frozenset({"alpha"}),
    "random_forest": frozenset({"n_estimators", "max_depth", "min_samples_leaf", "max_features"}),
    "hist_gradient_boosting": frozenset(
        {"max_depth", "learning_rate", "max_iter", "max_leaf_nodes", "min_samples_leaf", "l2_regularization"}
    ),
    "mlp": frozenset({"hidden_layer_sizes", "alpha", "learning_rate_init", "max_iter"}),
    "cnn": _IMAGE_COMMON | {"channels", "depth"},
    "resnet": _IMAGE_COMMON | {"depth", "width"},
    "torch_mlp": TORCH_COMMON | {"hidden"},
}

TORCH_FAMILIES = frozenset({"cnn", "resnet", "torch_mlp"})
IMAGE_FAMILIES = frozenset({"cnn", "resnet"})

# family -> tasks it has an estimator for. The linear families are one task each: a recipe asking
# logistic regression to regress is refused when it is parsed, never swapped for ridge.
_BOTH = frozenset({"classification", "regression"})
FAMILY_TASKS: dict[str, frozenset[str]] = {
    "logistic_regression": frozenset({"classification"}),
    "linear_regression": frozenset({"regression"}),
    "random_forest": _BOTH,
    "hist_gradient_boosting": _BOTH,
    "mlp": _BOTH,
    "cnn": frozenset({"image_classification"}),
    "resnet": frozenset({"image_classification"}),
    "torch_mlp": _BOTH,
}


def families_for(task: str) -> list[str]:
    """The families that can be trained for ``task``, sorted."""
    return sorted(f for f, tasks in FAMILY_TASKS.items() if task in tasks)


# accepted spellings that mean the same family
FAMILY_ALIASES = {
    "linear": "linear_regression",
    "logistic": "logistic_regression",
    "ridge": "linear_regression",
}
