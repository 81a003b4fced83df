"""The small interface every task adapter implements (Hugging Face plumbing lives in `hf.py`).

A task is constructed once per (model, options, device) in a worker (the model cache holds it),
declares its Arrow output type, encodes a list of inputs once per Arrow batch, and predicts the
output for a subset of the encoded rows (a micro-batch) as an Arrow array.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class BackendOptions(TaskOptions):
    """Options of the tasks that can run their transformer on another CPU backend (embed, classify,
    zero_shot): see `spark_infer.backends` for what each combination does."""

    backend: Literal["auto", "torch", "onnx", "openvino"] = Field(
        default="auto", description="auto = OpenVINO / ONNX Runtime on CPUs when installed (fp32: the same "
                                    "outputs within 1e-4), torch on GPUs")
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        default="auto", description="auto = fp32 on CPUs (dtype decides on GPUs); bf16 and int8 are opt-in "
                                    "reduced precision (a model change)")

    @model_validator(mode="after")
    def _one_precision_knob(self) -> BackendOptions:
        from spark_infer.backends import check_combination, effective_precision

        if self.precision != "auto" and self.dtype != "auto":
            raise ValueError("give dtype (torch weights) or precision, not both")
        if self.backend in ("onnx", "openvino") and self.dtype not in ("auto", "float32"):
            raise ValueError(f"dtype={self.dtype!r} is torch's weight precision; backend {self.backend!r} takes "
                             "precision (fp32, bf16, int8)")
        if self.backend != "auto":
            check_combination(self.backend, effective_precision(self.precision))
        return self


class ModelFiles(Protocol):
    """A model snapshot's files as the driver sees them at plan time (no weights loaded)."""

    #: relative paths of the snapshot's files ('/'-separated)
    names: frozenset[str]

    def read(self, rel: str) -> bytes | None:
        """One small file's bytes; None when the snapshot has no such file."""


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


@dataclass
class Scored:
    """What `predict` returns when some rows have no valid value: `values` holds nulls for them and
    `errors` (one per row, None where the row is fine) says why; they become error rows."""

    values: pa.Array
    errors: list[str | None]


class Task(ABC):
    """One inference task bound to a loaded model on one device."""

    name: ClassVar[str]
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    #: the job's output column when the config names none
    default_output_col: ClassVar[str] = "prediction"
    #: whether `encode` may run in a thread while `predict` runs (False when predict uses the tokenizer)
    prefetch_safe: ClassVar[bool] = True

    def __init__(self, model_dir: str, options: TaskOptions, device: str) -> None:
        self.model_dir = model_dir
        self.options = options
        self.device = device

    @classmethod
    @abstractmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        """The Arrow type of one output value, known before any model is loaded."""

    @classmethod
    def check_model(cls, options: TaskOptions, files: ModelFiles) -> list[str]:
        """Plan-time check that this task can run the model as its own library would (driver side,
        from a few small files). Raises ValueError naming what it cannot run; returns what it had
        to assume (recorded with the run). The default checks nothing."""
        return []

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
    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array | Scored:
        """Outputs for rows `idx` of `encoding`, in that order, as an array of `output_type` (or a
        `Scored` when some rows have no valid output; raising fails the whole micro-batch)."""

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
