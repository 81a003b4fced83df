"""`classify`: a fine-tuned sequence-classification head -> struct<label, score[, probabilities]>."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from spark_infer.tasks.base import Encoding, TaskOptions, label_score_array, label_score_type, register
from spark_infer.tasks.hf import HFTextTask


class ClassifyOptions(TaskOptions):
    multi_label: bool = Field(default=False, description="independent sigmoid per label instead of softmax")
    return_all_scores: bool = Field(default=False, description="add a map of every label's probability")


@register
class ClassifyTask(HFTextTask):
    """AutoModelForSequenceClassification; labels from the model's id2label."""

    name = "classify"
    Options = ClassifyOptions

    def __init__(self, model_dir: str, options: ClassifyOptions, device: str) -> None:
        super().__init__(model_dir, options, device)
        import torch
        from transformers import AutoModelForSequenceClassification

        self.model = self.load_model(AutoModelForSequenceClassification)
        n = self.model.config.num_labels
        id2label = self.model.config.id2label or {}
        self.labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(n)]
        self._torch = torch

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        return label_score_type("probabilities" if getattr(options, "return_all_scores", False) else None)

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        torch = self._torch
        ids, mask = self.pad(encoding, idx)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            probs = torch.sigmoid(logits) if self.options.multi_label else torch.softmax(logits, dim=-1)
            p = probs.cpu().numpy()
        return label_score_array(self.labels, p, p.argmax(axis=1),
                                 "probabilities" if self.options.return_all_scores else None)
