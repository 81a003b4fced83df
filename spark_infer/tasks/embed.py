"""`embed`: sentence embeddings as array<float> (mean or CLS pooling, optional L2 normalisation)."""

from __future__ import annotations

import json
import os
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from spark_infer.tasks.base import Encoding, TaskOptions, register
from spark_infer.tasks.hf import HFTextTask


class EmbedOptions(TaskOptions):
    pooling: Literal["auto", "mean", "cls"] = Field(
        default="auto", description="auto = the folder's sentence-transformers pooling config, else mean"
    )
    normalize: bool = Field(default=True, description="L2-normalise each embedding")


@register
class EmbedTask(HFTextTask):
    """Mean/CLS-pooled hidden states of an encoder (BERT-like) model."""

    name = "embed"
    Options = EmbedOptions
    default_output_col = "embedding"

    def __init__(self, model_dir: str, options: EmbedOptions, device: str) -> None:
        # a sentence-transformers folder may keep the transformer in a module folder (0_Transformer)
        super().__init__(_st_module_dir(model_dir, "Transformer", ""), options, device)
        import torch
        from transformers import AutoModel

        self.model = self.load_model(AutoModel)
        self.pooling = options.pooling if options.pooling != "auto" else _st_pooling(model_dir)
        self._torch = torch

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        return pa.list_(pa.float32())

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        torch = self._torch
        ids, mask = self.pad(encoding, idx)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            if self.pooling == "cls":
                emb = hidden[:, 0]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            emb = emb.float()
            if self.options.normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            arr = emb.cpu().numpy()
        n, dim = arr.shape
        offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(arr.reshape(-1)))


def _st_module_dir(model_dir: str, kind: str, default: str) -> str:
    """The folder of a sentence-transformers module (`Transformer`, `Pooling`), as the folder's own
    module list (`modules.json`) names it; `default` for folders without one."""
    path = default
    modules = os.path.join(model_dir, "modules.json")
    if os.path.exists(modules):
        with open(modules) as f:
            listed = [m for m in json.load(f) if str(m.get("type", "")).endswith(kind)]
        path = listed[0].get("path", default) if listed else default
    return os.path.join(model_dir, path) if path else model_dir


def _st_pooling(model_dir: str) -> str:
    """Pooling from a sentence-transformers folder's Pooling module; mean when the folder has none."""
    cfg = os.path.join(_st_module_dir(model_dir, "Pooling", "1_Pooling"), "config.json")
    if os.path.exists(cfg):
        with open(cfg) as f:
            c = json.load(f)
        if c.get("pooling_mode_cls_token"):
            return "cls"
    return "mean"
