"""`zero_shot`: pick the label whose description is closest to the text in an embedding space.

Texts and label descriptions go through the same embedding model as the `embed` task (default:
the packaged all-MiniLM-L6-v2), L2-normalised. For a text with cosine similarities `cos_k` to the
label descriptions, the output is

    scores_k = softmax_k(cos_k / temperature),   label = argmax_k cos_k,   score = scores_label

`temperature` (default 0.05, the inverse of the scale 20 sentence-transformers trains such models
with) only sharpens or flattens the scores; it never changes the chosen label. Label descriptions
default to `hypothesis_template` filled with the label ("This text is about {label}.") and are
embedded once when the task is loaded (once per worker and device), not per batch.

Output `struct<label:string, score:float[, scores:map<string,float>]>` (`scores` with
`return_all_scores: true`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from spark_infer.tasks.base import Encoding, Task, TaskOptions, label_score_array, label_score_type, register
from spark_infer.tasks.embed import EmbedOptions, EmbedTask


class ZeroShotOptions(TaskOptions):
    labels: list[str] = Field(min_length=2, description="label names (at least two, distinct)")
    label_descriptions: dict[str, str] | None = Field(
        default=None, description="label -> text embedded for it (labels left out use hypothesis_template)"
    )
    hypothesis_template: str = Field(
        default="This text is about {label}.", description="description of a label without one; has {label}"
    )
    temperature: float = Field(default=0.05, gt=0, le=100, description="softmax temperature over cosines")
    return_all_scores: bool = Field(default=False, description="add a map of every label's score")
    pooling: Literal["auto", "mean", "cls"] = Field(default="auto", description="as in the embed task")

    @field_validator("labels")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if any(not lab.strip() for lab in v):
            raise ValueError("labels must be non-empty strings")
        dup = sorted({lab for lab in v if v.count(lab) > 1})
        if dup:
            raise ValueError(f"duplicate labels {dup}")
        return v

    @field_validator("hypothesis_template")
    @classmethod
    def _has_label(cls, v: str) -> str:
        if "{label}" not in v:
            raise ValueError("hypothesis_template must contain {label}")
        try:
            v.format(label="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"hypothesis_template may only use the {{label}} field ({exc})") from None
        return v

    @model_validator(mode="after")
    def _described_labels_exist(self) -> ZeroShotOptions:
        unknown = sorted(set(self.label_descriptions or {}) - set(self.labels))
        if unknown:
            raise ValueError(f"label_descriptions has labels not in labels: {unknown}")
        return self

    def descriptions(self) -> list[str]:
        given = self.label_descriptions or {}
        return [given.get(lab) or self.hypothesis_template.format(label=lab) for lab in self.labels]


@register
class ZeroShotTask(Task):
    """Cosine similarity of text and label-description embeddings, softmax with a temperature."""

    name = "zero_shot"
    Options = ZeroShotOptions

    def __init__(self, model_dir: str, options: ZeroShotOptions, device: str) -> None:
        super().__init__(model_dir, options, device)
        embed_options = EmbedOptions(
            pooling=options.pooling, normalize=True, max_length=options.max_length, dtype=options.dtype,
            trust_remote_code=options.trust_remote_code, allow_pickle=options.allow_pickle,
        )
        self.embedder = EmbedTask(model_dir, embed_options, device)
        self.labels = list(options.labels)
        self.label_embeddings = self._embed_labels()  # (labels, dim), unit rows

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        return label_score_type("scores" if getattr(options, "return_all_scores", False) else None)

    def _embed_labels(self) -> np.ndarray:
        texts = self.options.descriptions()
        enc = self.embedder.encode(texts)
        return self._embed(enc, np.arange(len(texts)))

    def _embed(self, encoding: Encoding, idx: np.ndarray) -> np.ndarray:
        arr = self.embedder.predict(encoding, idx)
        return arr.values.to_numpy(zero_copy_only=False).reshape(len(idx), -1).astype(np.float32)

    def encode(self, values: Sequence[str]) -> Encoding:
        return self.embedder.encode(values)

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        cos = self._embed(encoding, idx) @ self.label_embeddings.T  # (rows, labels)
        logits = cos / self.options.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return label_score_array(self.labels, p, cos.argmax(axis=1),
                                 "scores" if self.options.return_all_scores else None)

    def close(self) -> None:
        self.embedder.close()
