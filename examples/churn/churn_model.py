"""The churn predictor: a small MLP over standardised numeric features and a one-hot plan.

`load(model_dir, device, **options)` is the factory the `custom` task calls once per worker and
device; `predictor.json` next to `model.safetensors` says how to build the features.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

OUTPUT_TYPE = "struct<churn_probability:double,label:string>"
WEIGHTS, META = "model.safetensors", "predictor.json"


class ChurnMLP(torch.nn.Module):
    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def features(df: pd.DataFrame, meta: dict) -> np.ndarray:
    """Feature matrix in meta["feature_order"]: z-scored numerics (null -> mean), one-hot categories
    (null or unknown -> all zeros)."""
    cols = []
    for name, mean, std in zip(meta["numeric"], meta["mean"], meta["std"], strict=True):
        x = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
        cols.append(np.nan_to_num((x - mean) / std, nan=0.0))
    for name, cats in meta["categorical"].items():
        values = df[name].astype(object).to_numpy()
        cols.extend((values == c).astype(np.float64) for c in cats)
    return np.stack(cols, axis=1)


class ChurnPredictor:
    """predict(df) -> DataFrame(churn_probability, label) for the custom task."""

    output_type = OUTPUT_TYPE

    def __init__(self, model_dir: str, device: str = "cpu", threshold: float = 0.5) -> None:
        with open(os.path.join(model_dir, META)) as f:
            self.meta = json.load(f)
        self.device = device
        self.threshold = float(threshold)
        self.model = ChurnMLP(len(self.meta["feature_order"]), self.meta["hidden"])
        self.model.load_state_dict(load_file(os.path.join(model_dir, WEIGHTS)))
        # tabular and tiny: float64 keeps each row's score independent of its micro-batch
        self.model = self.model.double().to(device).eval()

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        x = torch.from_numpy(features(df, self.meta)).to(self.device)
        with torch.inference_mode():
            p = torch.sigmoid(self.model(x)).cpu().numpy()
        return pd.DataFrame({"churn_probability": p, "label": np.where(p >= self.threshold, "churn", "stay")})


def load(model_dir: str, device: str = "cpu", threshold: float = 0.5) -> ChurnPredictor:
    """The factory named in job.yaml: `examples.churn.churn_model:load`."""
    return ChurnPredictor(model_dir, device=device, threshold=threshold)


load.output_type = OUTPUT_TYPE  # known on the driver before any worker loads the model
