"""Custom predictors the job tests score with (importable in Spark's Python workers: conftest puts
tests/ on PYTHONPATH)."""

from __future__ import annotations

import os
import time

import pandas as pd


class TextLength:
    """len(text): a near-free model whose outputs a test can compute itself. `delay_s` sleeps in each
    predict call (to keep a run busy while another one plans)."""

    output_type = "int"

    def __init__(self, device: str, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def predict(self, df: pd.DataFrame):
        if self.delay_s:
            time.sleep(self.delay_s)
        return df["text"].str.len().astype("Int64")


class Broken:
    """A model whose every call fails (a half-synced folder, a dead dependency)."""

    output_type = "double"

    def __init__(self, device: str) -> None:
        pass

    def predict(self, df: pd.DataFrame):
        raise RuntimeError("weights missing: cannot run the model")


class FailsOnMarker:
    """Fails on rows whose text holds `marker` (a row error: that input cannot be scored)."""

    output_type = "double"

    def __init__(self, device: str, marker: str = "BAD") -> None:
        self.marker = marker

    def predict(self, df: pd.DataFrame):
        if df["text"].str.contains(self.marker, regex=False).any():
            raise ValueError(f"cannot score text with {self.marker!r}")
        return df["text"].str.len().astype(float)


class BrokenWhileFlagged:
    """Broken for the rows of `category` while the file `flag` exists (a unit that fails in Spark)."""

    output_type = "double"

    def __init__(self, device: str, flag: str, category: str) -> None:
        self.flag, self.category = flag, category

    def predict(self, df: pd.DataFrame):
        if os.path.exists(self.flag) and (df["category"] == self.category).any():
            raise RuntimeError(f"model unavailable for {self.category}")
        return df["text"].str.len().astype(float)
