"""`embed`: sentence embeddings as array<float>, equal to `SentenceTransformer.encode` for the model.

sentence-transformers loads the model's own module stack as its `modules.json` lists it
(Transformer, Pooling in any mode, Dense, Normalize, LayerNorm, ...), in both the older and the
current (6.x) folder formats, and runs each micro-batch through it. What stays ours is around it:
rows are tokenized once per Arrow batch by the model's own Transformer module (its truncation, its
prompts), then length-sorted, packed under the token budget, padded per micro-batch on the side the
tokenizer pads, and retried smaller on OOM.

    from spark_infer.udf import predict_udf
    embed = predict_udf("embed", model="/models/e5-base", prompt_name="query")

* `normalize`: `None` (default) = what the model's modules say (a `Normalize` module or none);
  `true` adds an L2 normalisation, `false` drops the model's `Normalize` module.
* `prompt_name` / `prompt`: prepended as sentence-transformers does, from the model's
  `config_sentence_transformers.json` (its `default_prompt_name` applies when neither is given);
  a Pooling with `include_prompt: false` leaves the prompt's tokens out of the mean.
* `pooling`: `auto` = the model's Pooling module; another mode replaces it (an explicit change).
* A folder without `modules.json` (a plain Hugging Face model) gets mean pooling + L2 normalisation,
  the documented default, and the run record says it was assumed.
* A module this task cannot run (not a sentence-transformers module, a router, an image model) is a
  config error at plan time naming it.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from spark_infer.tasks.base import BackendOptions, Encoding, ModelFiles, Task, TaskOptions, register
from spark_infer.tasks.hf import as_texts, autocast, autocast_dtype, torch_dtype

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
#: the documented default for a folder that does not list its modules
ASSUMED_STACK = "no modules.json: mean pooling + L2 normalisation assumed (the embed task's default)"
#: sentence-transformers modules that take something else than one text per row, or give no
#: sentence embedding: refused at plan time
_REFUSED = {
    "Router": "it routes queries and documents to different modules (a task per call)",
    "Asym": "it routes queries and documents to different modules (a task per call)",
    "CLIPModel": "it embeds images and text with a CLIP model, not text through a tokenizer",
    "StaticEmbedding": "it has no transformer tokenizer to batch with (static token embeddings)",
}
_OTHER_KINDS = ("sentence_transformers.sparse_encoder.", "sentence_transformers.cross_encoder.",
                "sentence_transformers.multi_vector_encoder.")
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")


class EmbedOptions(BackendOptions):
    pooling: Literal["auto", "mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"] = Field(
        default="auto", description="auto = the model's own Pooling module (mean for a plain model folder)"
    )
    normalize: bool | None = Field(
        default=None, description="None = as the model's modules say; true = L2-normalise; false = drop Normalize"
    )
    prompt_name: str | None = Field(
        default=None, description="a prompt of the model's config_sentence_transformers.json, e.g. 'query'"
    )
    prompt: str | None = Field(default=None, description="text prepended to every input (instead of prompt_name)")

    @model_validator(mode="after")
    def _one_prompt(self) -> EmbedOptions:
        if self.prompt is not None and self.prompt_name is not None:
            raise ValueError("give prompt or prompt_name, not both")
        return self


def _json(files: ModelFiles, rel: str) -> Any:
    raw = files.read(rel)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"the model's {rel} is not valid JSON ({exc})") from None


def check_st_folder(options: EmbedOptions, files: ModelFiles) -> list[str]:
    """What `EmbedTask` can run, decided from the snapshot's small files (plan time, driver side)."""
    _check_pickle(options, files)
    modules = _json(files, "modules.json")
    if modules is None:
        if options.prompt_name is not None:
            raise ValueError(f"prompt_name={options.prompt_name!r}: the model has no "
                             "config_sentence_transformers.json prompts (no modules.json)")
        return [ASSUMED_STACK] if options.normalize is None and options.pooling == "auto" else []
    if not isinstance(modules, list) or not modules:
        raise ValueError("the model's modules.json lists no modules")
    for k, m in enumerate(modules):
        kind = str(m.get("type", "")) if isinstance(m, dict) else ""
        where = f"module {k} ({m.get('path') or '.' if isinstance(m, dict) else '?'}) of type {kind!r}"
        name = kind.rsplit(".", 1)[-1]
        if not kind.startswith("sentence_transformers."):
            if not options.trust_remote_code:
                raise ValueError(f"{where} is not a sentence-transformers module: it runs code shipped with "
                                 "the model (trust_remote_code=true to allow it)")
        elif kind.startswith(_OTHER_KINDS):
            raise ValueError(f"{where} belongs to another kind of model (sparse, cross or multi-vector "
                             "encoder): the embed task gives one dense vector per row")
        elif name in _REFUSED:
            raise ValueError(f"{where} cannot run in the embed task: {_REFUSED[name]}")
        if k == 0 and not name.endswith("Transformer"):
            raise ValueError(f"{where}: the first module must be a Transformer (text through a tokenizer)")
    config = _json(files, "config_sentence_transformers.json") or {}
    kind = config.get("model_type")
    if kind not in (None, "SentenceTransformer"):
        raise ValueError(f"the model is a {kind} (config_sentence_transformers.json): the embed task runs "
                         "SentenceTransformer models")
    prompts = config.get("prompts") or {}
    if options.prompt_name is not None and options.prompt_name not in prompts:
        raise ValueError(f"prompt_name={options.prompt_name!r} is not one of the model's prompts "
                         f"{sorted(prompts)} (config_sentence_transformers.json)")
    return []


def _check_pickle(options: TaskOptions, files: ModelFiles) -> None:
    """Safetensors only (unless allow_pickle), for the transformer's weights and every module's."""
    if options.allow_pickle:
        return
    folders: dict[str, set[str]] = {}
    for rel in files.names:
        if rel.endswith(_WEIGHTS):
            folders.setdefault(posixpath.dirname(rel), set()).add(rel)
    for folder, weights in sorted(folders.items()):
        if not any(w.endswith(".safetensors") for w in weights):
            raise ValueError(
                f"{folder or 'the model folder'} has only pickle weights ({', '.join(sorted(weights))}); they are "
                "refused unless allow_pickle=true (pickle files can run arbitrary code)"
            )


@register
class EmbedTask(Task):
    """The model's sentence-transformers module stack over length-sorted, token-budgeted micro-batches."""

    name = "embed"
    Options = EmbedOptions
    default_output_col = "embedding"
    #: rows tokenized per call (padding is per call: bounded memory for long Arrow batches)
    ENCODE_CHUNK = 512

    def __init__(self, model_dir: str, options: EmbedOptions, device: str) -> None:
        super().__init__(model_dir, options, device)
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Normalize
        from sentence_transformers.sentence_transformer.modules import Pooling
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        self._torch = torch
        self.dtype = torch_dtype(options.dtype, device)
        model_kwargs: dict[str, Any] = {"dtype": self.dtype}
        if not options.allow_pickle:
            model_kwargs["use_safetensors"] = True
        listed = os.path.exists(os.path.join(model_dir, "modules.json"))
        st = SentenceTransformer(model_dir, device=device, trust_remote_code=options.trust_remote_code,
                                 local_files_only=True, model_kwargs=model_kwargs)
        if "text" not in getattr(st, "modalities", ["text"]):
            raise ValueError(f"{model_dir}: the model does not embed text (modalities {st.modalities})")
        if options.pooling != "auto":
            pools = [k for k, m in enumerate(st) if isinstance(m, Pooling)]
            new = Pooling(_token_width(st[0]), pooling_mode=options.pooling)
            if pools:
                st[pools[0]] = new
            else:
                st.append(new)
        if options.normalize is False:
            for k in reversed([k for k, m in enumerate(st) if isinstance(m, Normalize)]):
                del st[k]
        # a plain model folder: sentence-transformers adds mean pooling; our default normalises too
        self.l2 = bool(options.normalize) or (options.normalize is None and not listed)
        st.eval()
        self.backend = options.backend if options.backend != "auto" else "torch"
        self.autocast = autocast_dtype(options)
        if self.backend != "torch":
            _run_transformer_on(st, self.backend, options.precision, model_dir)
        self.model = st
        self.tokenizer = st.tokenizer
        self.left_pad = getattr(self.tokenizer, "padding_side", "right") == "left"
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else 0
        self.prompt = _resolve_prompt(st, options.prompt, options.prompt_name)
        self.max_length = options.max_length or st.max_seq_length
        self.preprocess_kwargs = {"max_length": options.max_length} if options.max_length else {}
        self.truncate_dim = getattr(st, "truncate_dim", None)

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        return pa.list_(pa.float32())

    @classmethod
    def check_model(cls, options: TaskOptions, files: ModelFiles) -> list[str]:
        assert isinstance(options, EmbedOptions)
        return check_st_folder(options, files)

    # -- encode: the model's own tokenization, once per Arrow batch ---------------------------------
    def encode(self, values: Sequence[Any]) -> Encoding:
        texts = as_texts(values)
        ids: list[list[int]] = []
        rows: dict[str, list[list[int]]] = {}
        const: dict[str, Any] = {}
        for start in range(0, len(texts), self.ENCODE_CHUNK):
            feats = self.model.preprocess(texts[start: start + self.ENCODE_CHUNK], prompt=self.prompt,
                                          **self.preprocess_kwargs)
            mask = feats.get("attention_mask")
            if mask is None or "input_ids" not in feats:
                raise ValueError("the model's Transformer module gives no input_ids/attention_mask to batch with")
            shape = tuple(feats["input_ids"].shape)
            keep = mask.bool().numpy()
            for key, value in feats.items():
                if hasattr(value, "shape") and tuple(value.shape) == shape:
                    arr = value.numpy()
                    rows.setdefault(key, []).extend(arr[j][keep[j]].tolist() for j in range(shape[0]))
                else:  # batch-wide values (the modality, the prompt's length)
                    const[key] = value
        ids = rows.pop("input_ids")
        rows.pop("attention_mask", None)
        return Encoding(ids=ids, truncated=self._truncated(texts, ids), extra={"rows": rows, "const": const})

    def _truncated(self, texts: list[str], ids: list[list[int]]) -> int:
        """Rows cut to the length limit (a row at the limit is tokenized again, whole, to tell)."""
        at_limit = [j for j, r in enumerate(ids) if len(r) >= self.max_length]
        if not at_limit:
            return 0
        full = self.tokenizer([(self.prompt or "") + texts[j] for j in at_limit], truncation=False)["input_ids"]
        return sum(1 for r in full if len(r) > self.max_length)

    # -- predict: pad one micro-batch, run the module stack ------------------------------------------
    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        torch = self._torch
        lengths = [len(encoding.ids[i]) for i in idx]
        width = max(lengths)
        features: dict[str, Any] = {"input_ids": self._pad([encoding.ids[i] for i in idx], width, self.pad_id)}
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for k, n in enumerate(lengths):
            if self.left_pad:
                mask[k, width - n:] = 1
            else:
                mask[k, :n] = 1
        features["attention_mask"] = torch.from_numpy(mask)
        for key, per_row in encoding.extra["rows"].items():
            features[key] = self._pad([per_row[i] for i in idx], width, 0)
        features = {k: v.to(self.device, non_blocking=True) for k, v in features.items()}
        features.update(encoding.extra["const"])
        with torch.inference_mode(), autocast(self.device, self.autocast):
            emb = self.model(features)["sentence_embedding"]
            if self.truncate_dim:
                emb = emb[..., : self.truncate_dim]
            emb = emb.float()
            if self.l2:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            arr = emb.cpu().numpy()
        n, dim = arr.shape
        offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(arr.reshape(-1)))

    def _pad(self, rows: list[list[int]], width: int, value: int):
        out = np.full((len(rows), width), value, dtype=np.int64)
        for k, r in enumerate(rows):
            if self.left_pad:
                out[k, width - len(r):] = r
            else:
                out[k, : len(r)] = r
        return self._torch.from_numpy(out)

    def close(self) -> None:
        self.model = None


def _run_transformer_on(st: Any, backend: str, precision: str, model_dir: str) -> None:
    """Replace the forward of the model's Transformer module (its first) by the converted model on
    `backend`; Pooling, Dense, Normalize and the rest stay the model's own torch modules."""
    import torch

    from spark_infer.backends import BackendError
    from spark_infer.backends.runners import runner_for

    transformer = st[0]
    inner = getattr(transformer, "model", None) or getattr(transformer, "auto_model", None)
    if inner is None or not _gives_token_embeddings_of_text(transformer, inner):
        raise BackendError(f"backend={backend!r}: the model's Transformer module is not a plain text encoder "
                           "giving token embeddings (use backend torch)")
    runner = runner_for(inner, "feature-extraction", backend, precision, model_dir, st.tokenizer)
    output = transformer.module_output_name if hasattr(transformer, "module_output_name") else "token_embeddings"

    def forward(features: dict[str, Any], **_: Any) -> dict[str, Any]:
        feeds = {n: features[n].cpu().numpy() for n in runner.input_names if n in features}
        features[output] = torch.from_numpy(runner(feeds))
        return features

    transformer.forward = forward
    transformer.runner = runner


def _gives_token_embeddings_of_text(transformer: Any, inner: Any) -> bool:
    """Whether the Transformer module runs text through the model's `forward` into its last hidden
    state, and nothing more (no other modality, no per-layer outputs): what an export reproduces."""
    modalities = getattr(transformer, "modality_config", None) or {"text": {}}
    text = modalities.get("text", {})
    return (set(modalities) == {"text"} and text.get("method", "forward") == "forward"
            and text.get("method_output_name", "last_hidden_state") == "last_hidden_state"
            and not getattr(inner.config, "output_hidden_states", False))


def _token_width(transformer: Any) -> int:
    for name in ("get_embedding_dimension", "get_word_embedding_dimension"):
        if hasattr(transformer, name):
            return int(getattr(transformer, name)())
    return int(transformer.auto_model.config.hidden_size)


def _resolve_prompt(st: Any, prompt: str | None, prompt_name: str | None) -> str | None:
    """The prompt as `SentenceTransformer.encode` resolves it (an explicit prompt, a named one, the
    model's default prompt name)."""
    if prompt is not None:
        return prompt or None
    prompts = getattr(st, "prompts", None) or {}
    name = prompt_name if prompt_name is not None else getattr(st, "default_prompt_name", None)
    if name is None:
        return None
    if name not in prompts:
        raise ValueError(f"prompt_name={name!r} is not one of the model's prompts {sorted(prompts)}")
    return prompts[name] or None

