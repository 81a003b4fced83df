"""Train the churn MLP on synthetic customers and save it for the `custom` task.

    python -m examples.churn.train --out /tmp/spark-infer-churn/model

writes `model.safetensors` (weights) and `predictor.json` (feature order, normalisation stats,
categories, hidden size). The folder is what the job's `--model` points at: its files are the
model fingerprint, so retraining makes the next run rescore every partition.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

from examples.churn.churn_model import META, WEIGHTS, ChurnMLP, features
from examples.churn.synthetic import PLANS, churn_labels, generate_customers

NUMERIC = ["tenure_months", "monthly_charges", "support_calls"]


def train(out_dir: str, n: int = 4000, seed: int = 7, epochs: int = 300, hidden: int = 16) -> dict:
    """Train on `n` synthetic customers (80/20 split); returns holdout metrics."""
    df = generate_customers(n, seed=seed)
    y = churn_labels(df, seed=seed)
    meta = {
        "format": "spark-infer-example-churn-mlp",
        "version": 1,
        "numeric": NUMERIC,
        "mean": [float(df[c].mean()) for c in NUMERIC],
        "std": [float(df[c].std()) or 1.0 for c in NUMERIC],
        "categorical": {"plan": list(PLANS)},
        "feature_order": NUMERIC + [f"plan={p}" for p in PLANS],
        "hidden": hidden,
        "train": {"rows": n, "seed": seed, "epochs": epochs},
    }
    x = torch.from_numpy(features(df, meta).astype(np.float32))
    t = torch.from_numpy(y)
    n_train = int(0.8 * n)
    torch.manual_seed(seed)
    model = ChurnMLP(x.shape[1], hidden)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):  # full batch: 3,200 rows x 6 features
        opt.zero_grad()
        loss = loss_fn(model(x[:n_train]), t[:n_train])
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(x[n_train:])).numpy()
    holdout = y[n_train:]
    metrics = {
        "train_loss": float(loss.detach()),
        "holdout_accuracy": float(((p >= 0.5) == (holdout == 1)).mean()),
        "holdout_churn_rate": float(holdout.mean()),
    }
    meta["metrics"] = metrics
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out_dir, WEIGHTS))
    with open(os.path.join(out_dir, META), "w") as f:
        json.dump(meta, f, indent=2)
    return metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/spark-infer-churn/model")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=300)
    a = ap.parse_args(argv)
    print(json.dumps(train(a.out, a.rows, a.seed, a.epochs)))


if __name__ == "__main__":
    main()
