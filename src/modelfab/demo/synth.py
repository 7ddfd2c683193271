"""Synthetic churn-like data for the quickstart, tests and benchmarks (nothing is downloaded)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["churn_frame"]

PLANS = np.array(["basic", "standard", "premium"])
CONTRACTS = np.array(["monthly", "annual", "two_year"])


def churn_frame(
    sites: int = 200,
    rows_per_site: int = 2000,
    seed: int = 0,
    tiny_sites: int = 2,
    shift: dict[str, float] | None = None,
) -> pd.DataFrame:
    """Customers of ``sites`` sites; each site has its own churn drivers, so one model per site pays off.

    ``tiny_sites`` extra sites get too few rows to train (the factory must record and skip them).
    ``shift`` maps site names to a behaviour change (used by the iteration loop's demo).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    frames = []
    for s in range(sites + tiny_sites):
        name = f"site-{s:03d}"
        n = int(rng.integers(int(rows_per_site * 0.75), int(rows_per_site * 1.25) + 1)) if s < sites else 20
        w = rng.normal(0, 1, size=6)  # site-specific effects
        tenure = rng.gamma(2.0, 12.0, n).round()
        spend = np.clip(rng.normal(50 + 10 * w[0], 18, n), 5, None).round(2)
        calls = rng.poisson(np.exp(0.3 + 0.3 * w[1]), n)
        plan = PLANS[rng.choice(3, n, p=[0.5, 0.3, 0.2])]
        contract = CONTRACTS[rng.choice(3, n, p=[0.6, 0.25, 0.15])]
        plan_eff = np.select([plan == "basic", plan == "standard"], [0.6 * w[2], 0.0], -0.6 * w[2])
        logit = (
            -0.8
            - 0.04 * (1 + 0.5 * w[3]) * tenure
            + 0.02 * (spend - 50) * (1 + 0.5 * w[4])
            + (0.35 + 0.2 * w[5]) * calls
            + plan_eff
            - 1.2 * (contract != "monthly")
        )
        if shift and name in shift:
            logit = logit + shift[name] * (calls - 1.5) - 0.08 * shift[name] * tenure
        churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        frame = pd.DataFrame(
            {
                "site": name,
                "tenure": tenure,
                "monthly_spend": spend,
                "support_calls": calls,
                "plan": plan,
                "contract": contract,
                "churned": churned,
            }
        )
        frame.loc[rng.random(n) < 0.02, "monthly_spend"] = np.nan
        frame.loc[rng.random(n) < 0.01, "plan"] = None
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
