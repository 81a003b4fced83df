"""Hugging Face plumbing shared by the text tasks: tokenizer, padding, secure weight loading.

`load_pretrained` is the one place a task's weights are loaded: safetensors only unless
`allow_pickle`, remote code only with `trust_remote_code`, the resolved precision, on the device,
in eval mode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from spark_infer.tasks.base import Encoding, Task, TaskOptions


def torch_dtype(option: str, device: str):
    """auto = bfloat16 on GPUs that support it, float32 on CPU."""
    import torch

    if option == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, option)


def autocast_dtype(options: TaskOptions) -> Any:
    """torch's autocast dtype for `precision: bf16` on the torch backend (None: no autocast)."""
    if getattr(options, "precision", "auto") != "bf16" or getattr(options, "backend", "torch") not in ("torch", "auto"):
        return None
    import torch

    return torch.bfloat16


def autocast(device: str, dtype: Any) -> Any:
    """A context running ops in `dtype` where torch's autocast does (a no-op context for None)."""
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def has_safetensors(model_dir: str) -> bool:
    return any(f.endswith(".safetensors") for f in os.listdir(model_dir))


def load_pretrained(model_cls: Any, model_dir: str, options: TaskOptions, device: str, dtype: Any) -> Any:
    """Load weights with the security defaults: safetensors only (pickle refused unless
    `allow_pickle`), no remote code unless `trust_remote_code`; moved to `device`, eval mode."""
    if not has_safetensors(model_dir) and not options.allow_pickle:
        raise ValueError(
            f"{model_dir} has no .safetensors weights; pickle weights are refused unless "
            "allow_pickle=true (pickle files can run arbitrary code)"
        )
    model = model_cls.from_pretrained(
        model_dir,
        trust_remote_code=options.trust_remote_code,
        use_safetensors=None if options.allow_pickle else True,
        dtype=dtype,
    )
    return model.to(device).eval()


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

    def load_model(self, model_cls: Any) -> Any:
        """`model_cls.from_pretrained` of this task's folder, on its device and precision, in eval mode."""
        return load_pretrained(model_cls, self.model_dir, self.options, self.device, self.dtype)

    def load_classifier(self) -> Any:
        """The sequence classifier (its config gives labels), and its logits' runner: the converted
        model on the task's `backend` (ONNX Runtime, OpenVINO), or torch (in bf16 autocast when asked)."""
        from transformers import AutoModelForSequenceClassification

        model = self.load_model(AutoModelForSequenceClassification)
        backend = getattr(self.options, "backend", "torch")
        self.autocast = autocast_dtype(self.options)
        self.runner = None
        if backend in ("onnx", "openvino"):
            from spark_infer.backends.runners import runner_for

            self.runner = runner_for(model, "sequence-classification", backend, self.options.precision,
                                     self.model_dir, self.tokenizer)
        return model

    def logits(self, feeds: dict[str, Any]) -> np.ndarray:
        """float32 logits of one padded micro-batch (`feeds`: int64 tensors on the task's device)."""
        if self.runner is not None:
            return self.runner({k: v.cpu().numpy() for k, v in feeds.items()}).astype(np.float32, copy=False)
        import torch

        with torch.inference_mode(), autocast(self.device, self.autocast):
            return self.model(**feeds).logits.float().cpu().numpy()

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
        texts = as_texts(values)
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


def as_texts(values: Sequence[Any]) -> list[str]:
    """The inputs as strings; TypeError naming the type of the first that is not one."""
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"expected a string input, got {type(v).__name__}")
    return list(values)
