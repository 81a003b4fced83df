"""Synthetic customers with a known churn rule (plus noise), reproducible from a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

PLANS = ("basic", "plus", "pro")
REGIONS = ("north", "south", "east", "west")
#: the rule the data is generated from: churn when this logit plus N(0, NOISE) noise is > 0
PLAN_EFFECT = {"basic": 0.6, "plus": 0.0, "pro": -0.8}
NOISE = 0.5


def generate_customers(n: int, seed: int = 0, start_id: int = 0) -> pd.DataFrame:
    """`n` customers: customer_id, region, tenure_months, monthly_charges, support_calls, plan."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(PLANS, size=n, p=[0.4, 0.35, 0.25])
    base = np.select([plan == "basic", plan == "plus"], [35.0, 65.0], 95.0)
    spread = np.select([plan == "basic", plan == "plus"], [8.0, 10.0], 12.0)
    return pd.DataFrame({
        "customer_id": np.arange(start_id, start_id + n, dtype=np.int64),
        "region": rng.choice(REGIONS, size=n),
        "tenure_months": rng.integers(1, 73, size=n).astype(np.int32),
        "monthly_charges": np.round(np.clip(rng.normal(base, spread), 10.0, None), 2),
        "support_calls": rng.poisson(1.5, size=n).astype(np.int32),
        "plan": plan,
    })


def churn_logit(df: pd.DataFrame) -> np.ndarray:
    """The noiseless part of the churn rule."""
    return (
        0.8
        + 0.9 * (df["support_calls"].to_numpy() - 2)
        - 0.06 * (df["tenure_months"].to_numpy() - 24)
        + 0.025 * (df["monthly_charges"].to_numpy() - 70)
        + df["plan"].map(PLAN_EFFECT).to_numpy()
    )


def churn_labels(df: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """1 = churned: the rule's logit plus Gaussian noise above zero."""
    rng = np.random.default_rng(seed + 1_000_003)
    return (churn_logit(df) + rng.normal(0.0, NOISE, size=len(df)) > 0).astype(np.float32)
