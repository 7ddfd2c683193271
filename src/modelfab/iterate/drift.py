"""Population stability index (PSI) of live values against a training reference profile.

PSI = sum over bins of (live - ref) * ln(live / ref), shares floored at ``EPS`` so an empty bin counts as
very unlike rather than infinitely unlike. Rules of thumb: < 0.1 stable, 0.1-0.25 moving, > 0.25 shifted.
Numeric features use the training quantile bins plus a bin for missing values; categorical features use the
training categories, with unseen values pooled into ``__other__``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["EPS", "OTHER", "categorical_psi", "numeric_psi", "psi"]

EPS = 1e-4
OTHER = "__other__"


def psi(reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray) -> float:
    """PSI between two share vectors over the same bins."""
    ref = np.maximum(np.asarray(reference, dtype=float), EPS)
    cur = np.maximum(np.asarray(live, dtype=float), EPS)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def numeric_psi(profile: dict[str, Any], values: np.ndarray, *, missing: bool = True) -> float | None:
    """PSI of float ``values`` (NaN = missing) against a numeric profile ``{edges, shares, missing}``.

    ``missing=False`` ignores the profile's missing share (the factory's prediction profile states one
    relative to the training rows although it was computed on the holdout, and predictions never miss)."""
    n = len(values)
    edges = np.asarray(profile.get("edges") or [], dtype=float)
    shares = np.asarray(profile.get("shares") or [], dtype=float)
    if n == 0 or len(shares) != len(edges) + 1:
        return None
    missing_ref = float(profile.get("missing") or 0.0) if missing else 0.0
    ok = values[~np.isnan(values)]
    counts = np.bincount(np.searchsorted(edges, ok, side="right"), minlength=len(shares))
    live = np.append(counts / n, (n - len(ok)) / n)
    ref = np.append(shares * (1.0 - missing_ref), missing_ref)
    return psi(ref, live)


def categorical_psi(profile: dict[str, Any], values: Sequence[Any]) -> float | None:
    """PSI of category ``values`` (None counts as the empty category, as in training) against
    ``{shares: {category: share}}``."""
    n = len(values)
    shares: dict[str, float] = profile.get("shares") or {}
    if n == 0 or not shares:
        return None
    counts = Counter("" if v is None else str(v) for v in values)
    live: dict[str, float] = {}
    for key, c in counts.items():
        bucket = key if key in shares else OTHER
        live[bucket] = live.get(bucket, 0.0) + c / n
    keys = sorted(set(shares) | set(live))
    return psi([shares.get(k, 0.0) for k in keys], [live.get(k, 0.0) for k in keys])
