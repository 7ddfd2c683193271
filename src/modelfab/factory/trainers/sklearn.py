"""scikit-learn trainers: a preprocessing + estimator pipeline that exports to one ONNX graph.

Inputs are a DataFrame when there are categorical features, else a float matrix in ``numeric`` order.

Numeric columns are imputed (median) and, for linear and neural families, scaled inside the pipeline;
categorical columns are one-hot encoded with unknown values ignored. Missing categorical values arrive
as the empty string, which is just another category.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_pipeline"]

SCALED = frozenset({"logistic_regression", "linear_regression", "mlp"})


def build_pipeline(
    family: str, task: str, params: dict[str, Any], numeric: list[str], categorical: list[str], seed: int
) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
    if family in SCALED:
        steps.append(("scale", StandardScaler()))
    if not categorical:
        # All-numeric partitions train on a plain float matrix: no per-column dispatch, and the ONNX
        # graph still takes one input per feature (the converter concatenates them).
        return Pipeline([*steps, ("model", _estimator(family, task, params, seed))])
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(("num", Pipeline(steps), numeric))
    if categorical:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical))
    pre = ColumnTransformer(parts, remainder="drop")
    return Pipeline([("pre", pre), ("model", _estimator(family, task, params, seed))])


def _estimator(family: str, task: str, params: dict[str, Any], seed: int) -> Any:
    from modelfab.families import FAMILY_TASKS

    if task not in FAMILY_TASKS.get(family, ()):
        # Recipes are refused at parse time; a caller that skips parsing must not get another family.
        raise ValueError(f"family {family!r} cannot be trained for task {task!r} (see modelfab.families)")
    clf = task == "classification"
    if family == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(**{"max_iter": 500, "random_state": seed, **params})
    if family == "linear_regression":
        from sklearn.linear_model import Ridge

        return Ridge(**{"alpha": 1.0, "random_state": seed, **params})
    if family == "random_forest":
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestClassifier if clf else RandomForestRegressor
        return cls(**{"n_estimators": 50, "n_jobs": 1, "random_state": seed, **params})
    if family == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingClassifier if clf else HistGradientBoostingRegressor
        return cls(**{"max_iter": 100, "random_state": seed, **params})
    if family == "mlp":
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        cls = MLPClassifier if clf else MLPRegressor
        merged = {"hidden_layer_sizes": (32,), "max_iter": 300, "early_stopping": False, "random_state": seed}
        merged.update(params)
        if isinstance(merged["hidden_layer_sizes"], list):
            merged["hidden_layer_sizes"] = tuple(merged["hidden_layer_sizes"])
        return cls(**merged)
    raise AssertionError(f"family {family!r} is in FAMILY_TASKS but has no estimator")
