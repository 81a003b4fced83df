"""The small interface every task adapter implements, plus shared Hugging Face text plumbing.

A task is constructed once per (model, options, device) in a worker (the model cache holds it),
declares its Arrow output type, encodes a list of inputs once per Arrow batch, and predicts the
output for a subset of the encoded rows (a micro-batch) as an Arrow array.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available by its `name`."""
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type[Task]]:
    return dict(_REGISTRY)


class TaskOptions(BaseModel):
    """Options shared by every task; tasks subclass this with their own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int | None = Field(
        default=None, ge=1, description="truncate inputs to this many tokens (default: the model's own limit)"
    )
    dtype: str = Field(default="auto", pattern="^(auto|float32|bfloat16|float16)$")
    trust_remote_code: bool = Field(default=False, description="run code shipped with the model (unsafe)")
    allow_pickle: bool = Field(default=False, description="allow pickle (.bin) weights when no safetensors exist")


@dataclass
class Encoding:
    """Encoded rows of one Arrow batch: token ids per row plus how many rows were truncated."""

    ids: list[list[int]]
    truncated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def length(self, j: int) -> int:
        """Real input tokens of row j (the `tokens` metric)."""
        return len(self.ids[j])

    def budget_length(self, j: int) -> int:
        """What row j costs against the token budget (generation adds its reserved new tokens)."""
        return self.length(j)


class Task(ABC):
    """One inference task bound to a loaded model on one device."""

    name: ClassVar[str]
    Options: ClassVar[type[TaskOptions]] = TaskOptions

    def __init__(self, model_dir: str, options: TaskOptions, device: str) -> None:
        self.model_dir = model_dir
        self.options = options
        self.device = device

    @classmethod
    @abstractmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        """The Arrow type of one output value, known before any model is loaded."""

    @classmethod
    def input_columns(cls, options: TaskOptions) -> list[str] | None:
        """Columns the task reads as one dict per row, or None for one caller-chosen (text) column."""
        return None

    @property
    def output_type(self) -> pa.DataType:
        return self.output_type_for(self.options)

    @abstractmethod
    def encode(self, values: Sequence[Any]) -> Encoding:
        """Turn raw (non-null) inputs into model inputs. Called once per Arrow batch."""

    @abstractmethod
    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        """Outputs for rows `idx` of `encoding`, in that order, as an array of `output_type`."""

    def close(self) -> None:  # noqa: B027 - optional hook, most tasks need nothing
        """Release the model (called when the cache evicts it)."""


def label_score_type(all_scores_field: str | None = None) -> pa.DataType:
    """struct<label, score[, <all_scores_field>: map<label, score>]>, shared by label-producing tasks."""
    fields = [pa.field("label", pa.string()), pa.field("score", pa.float32())]
    if all_scores_field:
        fields.append(pa.field(all_scores_field, pa.map_(pa.string(), pa.float32())))
    return pa.struct(fields)


def label_score_array(
    labels: Sequence[str], probs: np.ndarray, best: np.ndarray, all_scores_field: str | None = None
) -> pa.StructArray:
    """Rows of `label_score_type`: the `best` label per row, its probability, optionally all of them."""
    arrays = [
        pa.array([labels[b] for b in best], type=pa.string()),
        pa.array(probs[np.arange(len(best)), best].astype(np.float32)),
    ]
    names = ["label", "score"]
    if all_scores_field:
        n, k = probs.shape
        offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
        keys = pa.array(list(labels) * n, type=pa.string())
        arrays.append(pa.MapArray.from_arrays(offsets, keys, pa.array(probs.reshape(-1).astype(np.float32))))
        names.append(all_scores_field)
    return pa.StructArray.from_arrays(arrays, names=names)


def torch_dtype(option: str, device: str):
    """auto = bfloat16 on GPUs that support it, float32 on CPU."""
    import torch

    if option == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, option)


def has_safetensors(model_dir: str) -> bool:
    return any(f.endswith(".safetensors") for f in os.listdir(model_dir))


class HFTextTask(Task):
    """Shared plumbing for tasks over a Hugging Face tokenizer + model on text input."""

    #: fallback when neither the options nor the model state a limit
    DEFAULT_MAX_LENGTH: ClassVar[int] = 512

    def __init__(self, model_dir: str, options: TaskOptions, device: str) -> None:
        super().__init__(model_dir, options, device)
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()

        self.tokenizer = AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=options.trust_remote_code, use_fast=True
        )
        if not self.tokenizer.is_fast:
            raise ValueError(f"{model_dir}: a fast (Rust) tokenizer is required (tokenizer.json)")
        self.max_length = self._resolve_max_length()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.dtype = torch_dtype(options.dtype, device)

    def load_kwargs(self) -> dict[str, Any]:
        """from_pretrained arguments enforcing the security defaults."""
        if not has_safetensors(self.model_dir) and not self.options.allow_pickle:
            raise ValueError(
                f"{self.model_dir} has no .safetensors weights; pickle weights are refused unless "
                "allow_pickle=true (pickle files can run arbitrary code)"
            )
        return {
            "trust_remote_code": self.options.trust_remote_code,
            "use_safetensors": None if self.options.allow_pickle else True,
            "dtype": self.dtype,
        }

    def _resolve_max_length(self) -> int:
        if self.options.max_length:
            return self.options.max_length
        # sentence-transformers folders state the length the model was trained with
        st_cfg = os.path.join(self.model_dir, "sentence_bert_config.json")
        if os.path.exists(st_cfg):
            with open(st_cfg) as f:
                msl = json.load(f).get("max_seq_length")
            if msl:
                return int(msl)
        tml = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tml, int) and 0 < tml < 100_000:
            return tml
        return self.DEFAULT_MAX_LENGTH

    #: rows tokenized per call: the fast tokenizer keeps every truncated-away token of a call alive
    #: until it returns, so one call over a 10k-row Arrow batch of long texts peaks at GBs
    ENCODE_CHUNK: ClassVar[int] = 512

    def encode(self, values: Sequence[Any]) -> Encoding:
        texts = [v if isinstance(v, str) else _not_text(v) for v in values]
        ids: list[list[int]] = []
        truncated = 0
        for start in range(0, len(texts), self.ENCODE_CHUNK):
            enc = self.tokenizer(
                texts[start: start + self.ENCODE_CHUNK],
                truncation=True,
                max_length=self.max_length,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            ids.extend(enc["input_ids"])
            # a row was cut to max_length when the tokenizer kept overflowing tokens for it
            truncated += sum(1 for e in enc.encodings if e.overflowing)
        return Encoding(ids=ids, truncated=truncated)

    def pad(self, encoding: Encoding, idx: np.ndarray, left: bool = False):
        """Pad rows `idx` into (input_ids, attention_mask) tensors on the task's device."""
        import torch

        rows = [encoding.ids[i] for i in idx]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for k, r in enumerate(rows):
            if left:
                ids[k, width - len(r):] = r
                mask[k, width - len(r):] = 1
            else:
                ids[k, : len(r)] = r
                mask[k, : len(r)] = 1
        return (
            torch.from_numpy(ids).to(self.device, non_blocking=True),
            torch.from_numpy(mask).to(self.device, non_blocking=True),
        )

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


def _not_text(v: Any) -> str:
    raise TypeError(f"expected a string input, got {type(v).__name__}")
