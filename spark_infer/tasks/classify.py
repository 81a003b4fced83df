"""`classify`: a fine-tuned sequence-classification head, scored as `pipeline("text-classification")` scores it.

Output `struct<label:string, score:float[, probabilities:map<string,float>][, top:array<struct<label,score>>]>`.

* The function over the logits is the pipeline's: `function_to_apply: default` takes it from the
  model's config: `problem_type: multi_label_classification` or a single label -> sigmoid,
  `single_label_classification` or several labels -> softmax, `regression` -> none (raw logits).
  `sigmoid`, `softmax` and `none` force one (`multi_label: true` is kept as the old name of sigmoid).
* `label` / `score`: the best label and its score (the pipeline's default output);
  `return_all_scores` adds every label's score as a map (`probabilities`);
  `top_k: k` adds `top`, the k best as the pipeline returns them with `top_k=k` (descending by
  score, ties in label order).
* Labels come from the model's `id2label` (`LABEL_<i>` where it names none).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from spark_infer.tasks.base import BackendOptions, Encoding, TaskOptions, label_score_array, register
from spark_infer.tasks.hf import HFTextTask

FUNCTIONS = ("default", "sigmoid", "softmax", "none")


class ClassifyOptions(BackendOptions):
    function_to_apply: Literal["default", "sigmoid", "softmax", "none"] = Field(
        default="default", description="default = from the model's problem_type, as the transformers pipeline"
    )
    multi_label: bool | None = Field(
        default=None, description="true = sigmoid per label, false = softmax (older name of function_to_apply)"
    )
    return_all_scores: bool = Field(default=False, description="add a map of every label's score")
    top_k: int | None = Field(default=None, ge=1, description="add `top`: the k best labels with their scores")

    @model_validator(mode="after")
    def _one_function(self) -> ClassifyOptions:
        if self.multi_label is not None and self.function_to_apply != "default":
            raise ValueError("give function_to_apply or multi_label, not both")
        return self

    def function(self) -> str:
        if self.multi_label is not None:
            return "sigmoid" if self.multi_label else "softmax"
        return self.function_to_apply


def pipeline_function(config, asked: str) -> str:
    """The function the transformers text-classification pipeline applies for this config."""
    if asked != "default":
        return asked
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    if problem == "single_label_classification" or config.num_labels > 1:
        return "softmax"
    return str(getattr(config, "function_to_apply", "none")).lower()


def apply_function(logits: np.ndarray, function: str) -> np.ndarray:
    """The pipeline's sigmoid / softmax / none, in float32 numpy as the pipeline computes them."""
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if function == "none":
        return logits
    raise ValueError(f"unknown function_to_apply {function!r}")


def top_array(labels: list[str], scores: np.ndarray, k: int) -> pa.ListArray:
    """Per row, the k best (label, score) in the pipeline's order: descending, stable for ties."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    n, kk = order.shape
    flat = order.reshape(-1)
    rows = np.repeat(np.arange(n), kk)
    items = pa.StructArray.from_arrays(
        [pa.array([labels[i] for i in flat], type=pa.string()), pa.array(scores[rows, flat].astype(np.float32))],
        names=["label", "score"])
    return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * kk, kk, dtype=np.int32)), items)


@register
class ClassifyTask(HFTextTask):
    """AutoModelForSequenceClassification; labels from the model's id2label."""

    name = "classify"
    Options = ClassifyOptions

    def __init__(self, model_dir: str, options: ClassifyOptions, device: str) -> None:
        super().__init__(model_dir, options, device)
        self.model = self.load_classifier()
        config = self.model.config
        id2label = config.id2label or {}
        self.labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
        self.function = pipeline_function(config, options.function())

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        fields = [pa.field("label", pa.string()), pa.field("score", pa.float32())]
        if getattr(options, "return_all_scores", False):
            fields.append(pa.field("probabilities", pa.map_(pa.string(), pa.float32())))
        if getattr(options, "top_k", None):
            fields.append(pa.field("top", pa.list_(pa.struct([pa.field("label", pa.string()),
                                                               pa.field("score", pa.float32())]))))
        return pa.struct(fields)

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        ids, mask = self.pad(encoding, idx)
        logits = self.logits({"input_ids": ids, "attention_mask": mask})
        scores = apply_function(logits, self.function)
        base = label_score_array(self.labels, scores, scores.argmax(axis=1),
                                 "probabilities" if self.options.return_all_scores else None)
        if not self.options.top_k:
            return base
        k = min(self.options.top_k, len(self.labels))
        arrays = [base.field(i) for i in range(base.type.num_fields)]
        names = [base.type.field(i).name for i in range(base.type.num_fields)]
        return pa.StructArray.from_arrays([*arrays, top_array(self.labels, scores, k)], names=[*names, "top"])
