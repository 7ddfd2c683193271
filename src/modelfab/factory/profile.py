"""Training reference profiles: per-feature histograms and frequencies for drift checks later."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PROFILE_BINS", "TOP_CATEGORIES", "reference_profile"]

PROFILE_BINS = 10
TOP_CATEGORIES = 50


def reference_profile(
    frame: Any, numeric: list[str], categorical: list[str], predictions: Any | None = None
) -> dict[str, Any]:
    """Numeric: quantile bin edges with the share of rows in each bin, plus missing share.
    Categorical: share of each of the most frequent values, the rest pooled under ``__other__``.

    The outer edges are open (-inf, +inf) so every later value falls in some bin.
    """
    n = len(frame)
    features: dict[str, Any] = {}
    for c in numeric:
        if isinstance(frame, np.ndarray):
            col = frame[:, numeric.index(c)].astype(float)
        else:
            col = frame[c].to_numpy(dtype=float, na_value=np.nan)
        ok = col[~np.isnan(col)]
        features[c] = _numeric(ok, n)
    for c in categorical:
        counts = frame[c].fillna("").astype(str).value_counts()
        top = counts.iloc[:TOP_CATEGORIES]
        shares = {str(k): float(v) / n for k, v in top.items()}
        rest = float(counts.iloc[TOP_CATEGORIES:].sum()) / n
        if rest:
            shares["__other__"] = rest
        features[c] = {"kind": "categorical", "shares": shares, "count": n}
    out: dict[str, Any] = {"rows": n, "features": features}
    if predictions is not None:
        scores = np.asarray(predictions, dtype=float).ravel()
        out["prediction"] = _numeric(scores[~np.isnan(scores)], len(scores))
    return out


def _numeric(ok: np.ndarray, n: int) -> dict[str, Any]:
    if len(ok) == 0:
        return {"kind": "numeric", "edges": [], "shares": [], "missing": 1.0, "count": n}
    inner = np.unique(np.quantile(ok, np.linspace(0, 1, PROFILE_BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(inner, ok, side="right"), minlength=len(inner) + 1)
    return {
        "kind": "numeric",
        "edges": [float(e) for e in inner],
        "shares": [float(c) / len(ok) for c in counts],
        "missing": 1.0 - len(ok) / n if n else 0.0,
        "mean": float(ok.mean()),
        "std": float(ok.std()),
        "count": n,
    }
