"""PSI against the factory's reference profiles, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from modelfab.factory.profile import reference_profile
from modelfab.iterate.drift import categorical_psi, numeric_psi, psi


def test_psi_by_hand() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    expected = (0.7 - 0.5) * math.log(0.7 / 0.5) + (0.3 - 0.5) * math.log(0.3 / 0.5)
    assert psi([0.5, 0.5], [0.7, 0.3]) == pytest.approx(expected)
    assert psi([0.0, 1.0], [0.0, 1.0]) == 0.0  # empty bins on both sides add nothing


def test_numeric_psi_uses_the_training_bins_and_missing_share() -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(size=5000), "c": rng.choice(["a", "b"], 5000)})
    profile = reference_profile(train, ["x"], ["c"])["features"]
    same = numeric_psi(profile["x"], rng.normal(size=5000))
    moved = numeric_psi(profile["x"], rng.normal(loc=1.0, size=5000))
    assert same is not None and moved is not None
    assert same < 0.02 < 0.25 < moved
    holes = rng.normal(size=5000)
    holes[:2500] = np.nan  # half missing where training had none
    assert numeric_psi(profile["x"], holes) > 1.0  # type: ignore[operator]
    assert numeric_psi(profile["x"], np.array([])) is None


def test_categorical_psi_pools_unseen_values() -> None:
    profile = {"kind": "categorical", "shares": {"a": 0.5, "b": 0.5}}
    assert categorical_psi(profile, ["a", "b"] * 50) == pytest.approx(0.0)
    unseen = categorical_psi(profile, ["a"] * 50 + ["zzz"] * 50)
    assert unseen is not None and unseen > 1.0
    assert categorical_psi(profile, []) is None
