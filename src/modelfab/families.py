"""Model families a recipe may name, and the hyperparameters each one accepts.

Kept free of heavy imports: recipes are validated against this table before scikit-learn loads.
"""

from __future__ import annotations

__all__ = ["FAMILIES", "FAMILY_ALIASES", "FAMILY_TASKS", "families_for"]

# family -> hyperparameters a recipe may set or search
FAMILIES: dict[str, frozenset[str]] = {
    "logistic_regression": frozenset({"C", "max_iter", "l1_ratio"}),
    "linear_regression": frozenset({"alpha"}),
    "random_forest": frozenset({"n_estimators", "max_depth", "min_samples_leaf", "max_features"}),
    "hist_gradient_boosting": frozenset(
        {"max_depth", "learning_rate", "max_iter", "max_leaf_nodes", "min_samples_leaf", "l2_regularization"}
    ),
    "mlp": frozenset({"hidden_layer_sizes", "alpha", "learning_rate_init", "max_iter"}),
}

# family -> tasks it has an estimator for. The linear families are one task each: a recipe asking
# logistic regression to regress is refused when it is parsed, never swapped for ridge.
_BOTH = frozenset({"classification", "regression"})
FAMILY_TASKS: dict[str, frozenset[str]] = {
    "logistic_regression": frozenset({"classification"}),
    "linear_regression": frozenset({"regression"}),
    "random_forest": _BOTH,
    "hist_gradient_boosting": _BOTH,
    "mlp": _BOTH,
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
