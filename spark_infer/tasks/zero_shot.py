"""`zero_shot`: pick the best of a list of labels for each text, with no training on those labels.

Two modes, chosen by `mode` (`auto` = `nli` when the model is an NLI classifier, i.e. a sequence
classifier whose labels include one starting with "entail"; `embedding` otherwise):

**embedding** (an embedding model, default: the packaged all-MiniLM-L6-v2): texts and label
descriptions go through the `embed` task, L2-normalised. For a text with cosine similarities `cos_k`
to the label descriptions,

    scores_k = softmax_k(cos_k / temperature),   label = argmax_k cos_k,   score = scores_label

`temperature` (default 0.05, the inverse of the scale 20 sentence-transformers trains such models
with) only sharpens or flattens the scores; it never changes the chosen label. Label descriptions
are embedded once when the task is loaded (once per worker and device), not per batch.

**nli** (an NLI cross-encoder such as an MNLI-fine-tuned BART/DeBERTa): what
`pipeline("zero-shot-classification")` computes. Each (text, hypothesis) pair is classified, the
text truncated first; the scores are the softmax of the entailment logits over the labels, or with
`multi_label: true` each label's own softmax of entailment vs contradiction. Costlier: one model
call per label per row (the token budget counts every pair).

Label descriptions (both modes) default to `hypothesis_template` filled with the label ("This text
is about {label}."). When to use which: embedding is fastest and good for topic-like labels; NLI
follows label wording more closely and handles multi-label; a generative model constrained to the
labels (`generate` with `response_format` as a list of choices) suits labels that need reasoning.

Output `struct<label:string, score:float[, scores:map<string,float>]>` (`scores` with
`return_all_scores: true`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from spark_infer.tasks.base import (
    BackendOptions,
    Encoding,
    ModelFiles,
    Task,
    TaskOptions,
    label_score_array,
    label_score_type,
    register,
)
from spark_infer.tasks.embed import EmbedOptions, EmbedTask, check_st_folder
from spark_infer.tasks.hf import HFTextTask, as_texts


class ZeroShotOptions(BackendOptions):
    labels: list[str] = Field(min_length=2, description="label names (at least two, distinct)")
    label_descriptions: dict[str, str] | None = Field(
        default=None, description="label -> text embedded for it (labels left out use hypothesis_template)"
    )
    hypothesis_template: str = Field(
        default="This text is about {label}.", description="description of a label without one; has {label}"
    )
    temperature: float = Field(default=0.05, gt=0, le=100,
                               description="softmax temperature over cosines (embedding mode)")
    return_all_scores: bool = Field(default=False, description="add a map of every label's score")
    pooling: Literal["auto", "mean", "cls"] = Field(default="auto", description="as in the embed task")
    mode: Literal["auto", "embedding", "nli"] = Field(
        default="auto", description="auto = nli for an NLI classifier (an 'entailment' label), else embedding"
    )
    multi_label: bool = Field(default=False, description="nli: score each label on its own (entailment vs "
                                                         "contradiction) instead of a softmax over labels")

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


def entailment_id(label2id: dict[str, int] | None) -> int:
    """The entailment label's id as the transformers pipeline finds it (-1 when none)."""
    for label, ind in (label2id or {}).items():
        if label.lower().startswith("entail"):
            return int(ind)
    return -1


def nli_mode(config: dict[str, Any]) -> bool:
    """Whether `mode: auto` runs a model (its config.json) as an NLI classifier."""
    archs = config.get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in archs) and \
        entailment_id(config.get("label2id")) >= 0


@dataclass
class PairEncoding(Encoding):
    """NLI rows: one (text, hypothesis) pair per label; a row weighs all its pairs in the token budget."""

    pairs: list[list[list[int]]] = field(default_factory=list)
    types: list[list[list[int]]] = field(default_factory=list)

    def budget_length(self, j: int) -> int:
        return len(self.pairs[j]) * max(len(p) for p in self.pairs[j])  # padded with the longest pair


@register
class ZeroShotTask(Task):
    """Embedding similarity (softmax with a temperature) or an NLI classifier as the transformers
    zero-shot pipeline runs it."""

    name = "zero_shot"
    Options = ZeroShotOptions

    def __init__(self, model_dir: str, options: ZeroShotOptions, device: str) -> None:
        super().__init__(model_dir, options, device)
        self.labels = list(options.labels)
        config_path = os.path.join(model_dir, "config.json")
        config: dict[str, Any] = {}
        if os.path.exists(config_path):
            with open(config_path) as f:
                config = json.load(f)
        self.nli = options.mode == "nli" or (options.mode == "auto" and nli_mode(config))
        if self.nli:
            self.classifier = _NLI(model_dir, options, device)
        else:
            if options.multi_label:
                raise ValueError("multi_label applies to the nli mode (this model runs in the embedding mode)")
            embed_options = EmbedOptions(
                pooling=options.pooling, normalize=True, max_length=options.max_length, dtype=options.dtype,
                trust_remote_code=options.trust_remote_code, allow_pickle=options.allow_pickle,
                backend=options.backend, precision=options.precision,
            )
            self.embedder = EmbedTask(model_dir, embed_options, device)
            self.label_embeddings = self._embed_labels()  # (labels, dim), unit rows

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        return label_score_type("scores" if getattr(options, "return_all_scores", False) else None)

    @classmethod
    def check_model(cls, options: TaskOptions, files: ModelFiles) -> list[str]:
        assert isinstance(options, ZeroShotOptions)
        raw = files.read("config.json")
        config = json.loads(raw) if raw else {}
        if options.mode == "nli" or (options.mode == "auto" and nli_mode(config)):
            if entailment_id(config.get("label2id")) < 0:
                raise ValueError(f"mode=nli needs an NLI classifier: no label starting with 'entail' in its "
                                 f"label2id {sorted(config.get('label2id') or {})}")
            return []
        if options.multi_label:
            raise ValueError("multi_label applies to the nli mode; this model runs in the embedding mode "
                             "(not a sequence classifier with an entailment label)")
        return check_st_folder(EmbedOptions(pooling=options.pooling, normalize=True,
                                            trust_remote_code=options.trust_remote_code,
                                            allow_pickle=options.allow_pickle), files)

    def _embed_labels(self) -> np.ndarray:
        texts = self.options.descriptions()
        enc = self.embedder.encode(texts)
        return self._embed(enc, np.arange(len(texts)))

    def _embed(self, encoding: Encoding, idx: np.ndarray) -> np.ndarray:
        arr = self.embedder.predict(encoding, idx)
        return arr.values.to_numpy(zero_copy_only=False).reshape(len(idx), -1).astype(np.float32)

    def encode(self, values: Sequence[str]) -> Encoding:
        if self.nli:
            return self.classifier.encode(values)
        return self.embedder.encode(values)

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        all_scores = "scores" if self.options.return_all_scores else None
        if self.nli:
            p = self.classifier.scores(encoding, idx)
            return label_score_array(self.labels, p, p.argmax(axis=1), all_scores)
        cos = self._embed(encoding, idx) @ self.label_embeddings.T  # (rows, labels)
        logits = cos / self.options.temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return label_score_array(self.labels, p, cos.argmax(axis=1), all_scores)

    def close(self) -> None:
        if self.nli:
            self.classifier.close()
        else:
            self.embedder.close()


class _NLI(HFTextTask):
    """The NLI classifier under the zero-shot task: pairs in, the pipeline's scores out."""

    name = "zero_shot"  # not registered: runs inside ZeroShotTask

    def __init__(self, model_dir: str, options: ZeroShotOptions, device: str) -> None:
        super().__init__(model_dir, options, device)
        self.model = self.load_classifier()
        self.entail = entailment_id(self.model.config.label2id)
        if self.entail < 0:
            raise ValueError(f"{model_dir}: mode=nli needs a label starting with 'entail' in label2id")
        # the pipeline's contradiction column: 0, or the last one when entailment is 0
        self.contradiction = -1 if self.entail == 0 else 0
        self.hypotheses = options.descriptions()
        self.multi_label = options.multi_label

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:  # pragma: no cover - never registered
        return ZeroShotTask.output_type_for(options)

    def encode(self, values: Sequence[Any]) -> PairEncoding:
        texts = as_texts(values)
        firsts = [t for t in texts for _ in self.hypotheses]
        seconds = self.hypotheses * len(texts)
        pairs: list[list[list[int]]] = []
        types: list[list[list[int]]] = []
        truncated = 0
        n = len(self.hypotheses)
        step = max(1, self.ENCODE_CHUNK // n) * n
        for start in range(0, len(firsts), step):
            # the text is cut first, never the hypothesis (the pipeline's truncation="only_first")
            enc = self.tokenizer(firsts[start: start + step], seconds[start: start + step],
                                 truncation="only_first", max_length=self.max_length, padding=False,
                                 return_attention_mask=False, return_token_type_ids=True)
            tt = enc.get("token_type_ids") or [[0] * len(r) for r in enc["input_ids"]]
            for k in range(0, len(enc["input_ids"]), n):
                pairs.append([list(r) for r in enc["input_ids"][k: k + n]])
                types.append([list(r) for r in tt[k: k + n]])
            truncated += sum(1 for k in range(0, len(enc.encodings), n)
                             if any(e.overflowing for e in enc.encodings[k: k + n]))
        ids = [max(p, key=len) for p in pairs]
        return PairEncoding(ids=ids, truncated=truncated, pairs=pairs, types=types)

    def scores(self, encoding: Encoding, idx: np.ndarray) -> np.ndarray:
        assert isinstance(encoding, PairEncoding)
        import torch

        flat = [p for i in idx for p in encoding.pairs[i]]
        flat_types = [t for i in idx for t in encoding.types[i]]
        width = max(len(r) for r in flat)
        ids = np.full((len(flat), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(flat), width), dtype=np.int64)
        tt = np.zeros((len(flat), width), dtype=np.int64)
        for k, (r, t) in enumerate(zip(flat, flat_types, strict=True)):
            ids[k, : len(r)] = r
            mask[k, : len(r)] = 1
            tt[k, : len(t)] = t
        kw = {"input_ids": torch.from_numpy(ids).to(self.device), "attention_mask": torch.from_numpy(mask).to(self.device)}
        if "token_type_ids" in self.tokenizer.model_input_names:
            kw["token_type_ids"] = torch.from_numpy(tt).to(self.device)
        logits = self.logits(kw)
        logits = logits.reshape(len(idx), len(self.hypotheses), -1)
        # the pipeline's formulas, as it computes them (float32 numpy, no max shift)
        if self.multi_label:
            ec = logits[..., [self.contradiction, self.entail]]
            return (np.exp(ec) / np.exp(ec).sum(-1, keepdims=True))[..., 1]
        e = logits[..., self.entail]
        return np.exp(e) / np.exp(e).sum(-1, keepdims=True)

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:  # pragma: no cover - see scores
        raise NotImplementedError

