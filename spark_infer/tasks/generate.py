"""`generate`: text generation (summaries, rewrites, descriptions) with seq2seq or decoder-only models.

Output `struct<text:string, input_tokens:int, output_tokens:int, finish_reason:string>`:

* `text`: the generated text (special tokens dropped), cut before the first `stop` string;
* `input_tokens`: prompt tokens fed to the model (after truncation, special tokens included);
* `output_tokens`: tokens the model generated for the row up to where it stopped: the eos token
  included, or up to and including the token that completed a stop string, or `max_new_tokens`;
* `finish_reason`: "stop" (eos or a stop string) or "length" (hit `max_new_tokens`).

The model kind comes from its config: `is_encoder_decoder` -> AutoModelForSeq2SeqLM (T5, BART),
otherwise AutoModelForCausalLM, left-padded, with the eos token as pad token when the tokenizer has
none.

With `prompt_template` the task reads the template's fields as columns (`{name}`, `{category}` ...);
a row whose field is null is an error row (null output, the error column names the field) rather
than a prompt with "None" in it.

Sampling (`do_sample: true`) generates each row on its own, seeded with `seed` and a stable hash of
the row's prompt: a row's output depends only on (model, options, prompt), never on which rows share
its micro-batch, and rows with equal prompts get equal outputs. Greedy and beam search run batched.

Decoding settings are the model's own: its `generation_config.json` (num_beams, do_sample,
temperature, repetition_penalty, no_repeat_ngram_size, length limits...) updated with the options
that were set, exactly as `model.generate(**options)` merges its keyword arguments. An option left
unset never overrides the model. `max_new_tokens` unset is the model's `max_new_tokens`, else its
`max_length` when its config sets one, else 64. A model whose config samples (`do_sample: true`)
samples here too, seeded per row, so reruns give the same text.

The token budget (`token_budget`) counts what generation holds in memory: each row weighs
(prompt tokens + max_new_tokens) x num_beams.
"""

from __future__ import annotations

import copy
import hashlib
import json
import string
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from spark_infer.tasks import _structured as structured
from spark_infer.tasks.base import Encoding, ModelFiles, Scored, TaskOptions, register
from spark_infer.tasks.hf import HFTextTask


class GenerateOptions(TaskOptions):
    prompt_template: str | None = Field(
        default=None,
        description="str.format template over input columns, e.g. 'Describe {name} in {category}:'; "
        "without it the task reads one text column",
    )
    chat_template: bool = Field(
        default=False, description="wrap the prompt as a user message with the tokenizer's chat template"
    )
    # Left unset (None), each of these is the model's own generation_config.json value, merged the
    # way `model.generate(**kwargs)` merges its kwargs into the model's generation config.
    max_new_tokens: int | None = Field(
        default=None, ge=1, le=1_000_000,
        description="generated tokens per row, at most (unset: the model's generation config, else 64)")
    min_new_tokens: int | None = Field(default=None, ge=0, description="generate at least this many tokens")
    num_beams: int | None = Field(default=None, ge=1, le=64, description="beam search width (1 = greedy or sampling)")
    do_sample: bool | None = Field(default=None, description="sample (per row, seeded) instead of greedy/beam search")
    temperature: float | None = Field(default=None, gt=0, description="sampling temperature (sampling only)")
    top_p: float | None = Field(default=None, gt=0, le=1, description="nucleus sampling mass (sampling only)")
    top_k: int | None = Field(default=None, ge=0, description="sample among the k likeliest tokens (sampling only)")
    repetition_penalty: float | None = Field(default=None, gt=0, description="penalise repeated tokens (>1)")
    length_penalty: float | None = Field(default=None, description="beam search: >0 favours longer outputs")
    no_repeat_ngram_size: int | None = Field(default=None, ge=0, description="never repeat an n-gram of this size")
    seed: int = Field(default=0, description="sampling seed, combined per row with a hash of the prompt")
    response_format: Any = Field(
        default=None,
        description="constrain the output: a Spark DDL struct ('category STRING, urgency INT'), a JSON schema, a "
        "list of choices, or {'regex': ...}; the output column is then typed accordingly",
    )
    return_generation: bool = Field(
        default=False, description="with response_format: struct<value, text, input_tokens, output_tokens, "
        "finish_reason> instead of the value alone")
    stop: list[str] = Field(default_factory=list, description="cut the output before the first of these")

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, v: str | None) -> str | None:
        if v is not None:
            template_fields(v)  # raises ValueError naming the problem
        return v

    @field_validator("response_format", mode="before")
    @classmethod
    def _response_format(cls, v: Any) -> Any:
        return structured.normalise(v)

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must be non-empty")
        return v

    @model_validator(mode="after")
    def _sampling_only(self) -> GenerateOptions:
        if self.do_sample is False and self.sampling_options():
            raise ValueError(f"{', '.join(self.sampling_options())} apply only when sampling (do_sample=true)")
        if self.response_format is not None:
            if self.num_beams not in (None, 1):
                raise ValueError("response_format decodes one sequence per row: num_beams must be 1")
            if self.stop:
                raise ValueError("response_format ends the output where the value ends: stop strings would cut it")
        elif self.return_generation:
            raise ValueError("return_generation applies with a response_format")
        return self

    def sampling_options(self) -> list[str]:
        return [k for k in SAMPLING if getattr(self, k) is not None]

    def generation_kwargs(self) -> dict[str, Any]:
        """The options the user set, as `model.generate` kwargs (the rest is the model's own)."""
        return {k: getattr(self, k) for k in GENERATION_KWARGS if getattr(self, k) is not None}


#: generate() kwargs the options pass through when set
GENERATION_KWARGS = ("max_new_tokens", "min_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "top_k",
                     "repetition_penalty", "length_penalty", "no_repeat_ngram_size")
SAMPLING = ("temperature", "top_p", "top_k")
#: new tokens per row when neither the options nor the model's generation config bound them
DEFAULT_NEW_TOKENS = 64


def template_fields(template: str) -> list[str]:
    """The distinct field names of a str.format template, in order; ValueError for unusable ones."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"prompt_template is not a valid format string: {exc}") from None
    names: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name or not name.isidentifier():
            raise ValueError(
                f"prompt_template field {{{name}}} must be a column name (no positional, attribute or "
                "index fields; write a literal brace as {{ or }})"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("prompt_template has no {column} field")
    return names


def row_seed(seed: int, prompt: str) -> int:
    """A stable 63-bit seed for one row: the same for equal (seed, prompt) on every machine."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class GenerateEncoding(Encoding):
    """Prompt ids per row; `budget_length` counts the tokens generation will hold (the token budget)."""

    new_tokens: int = 0
    beams: int = 1

    def budget_length(self, j: int) -> int:
        return (len(self.ids[j]) + self.new_tokens) * self.beams


@register
class GenerateTask(HFTextTask):
    """AutoModelForSeq2SeqLM or AutoModelForCausalLM `generate`, greedy, beam search or seeded sampling."""

    name = "generate"
    Options = GenerateOptions
    prefetch_safe = False  # stop strings decode with the tokenizer while generating

    def __init__(self, model_dir: str, options: GenerateOptions, device: str) -> None:
        super().__init__(model_dir, options, device)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

        self._torch = torch
        tok = self.tokenizer
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=options.trust_remote_code)
        self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        model_cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = self.load_model(model_cls)
        if options.chat_template and not getattr(tok, "chat_template", None):
            raise ValueError(f"chat_template=true but the tokenizer in {model_dir} has no chat template")

        gen_cfg = self.model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else tok.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if tok.pad_token_id is not None:
            self.pad_id = tok.pad_token_id
        elif gen_cfg.pad_token_id is not None:
            self.pad_id = gen_cfg.pad_token_id
        elif self.eos_ids:
            self.pad_id = min(self.eos_ids) if tok.eos_token_id is None else tok.eos_token_id
        elif self.seq2seq:
            self.pad_id = 0
        else:
            raise ValueError(f"{model_dir}: the tokenizer has neither a pad nor an eos token")
        self.bos_id = tok.bos_token_id if tok.bos_token_id is not None else gen_cfg.bos_token_id

        # the model's generation config, updated with the options that were set (as generate merges kwargs)
        explicit = options.generation_kwargs()
        effective = copy.deepcopy(gen_cfg)
        effective.update(**explicit)
        if options.max_new_tokens is not None:
            self.new_tokens = options.max_new_tokens
        elif gen_cfg.max_new_tokens is not None:
            self.new_tokens = gen_cfg.max_new_tokens
        elif "max_length" in gen_cfg.to_diff_dict():
            # the model bounds the whole length (decoder-only: prompt included): generate runs to it
            self.new_tokens = gen_cfg.max_length
        else:
            self.new_tokens = explicit["max_new_tokens"] = DEFAULT_NEW_TOKENS
        self.do_sample = bool(effective.do_sample)
        self.beams = int(effective.num_beams or 1)
        if not self.do_sample and options.sampling_options():
            raise ValueError(f"{', '.join(options.sampling_options())} apply only when sampling, and the model's "
                             "generation config does not sample: set do_sample=true")

        if not self.seq2seq:
            # a decoder-only model holds prompt + generated tokens in one context window
            n_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
            if isinstance(n_pos, int) and n_pos > 0:
                room = n_pos - self.new_tokens
                if room < 1:
                    raise ValueError(
                        f"max_new_tokens={self.new_tokens} leaves no room for a prompt in the "
                        f"model's {n_pos}-token context"
                    )
                self.max_length = min(self.max_length, room)

        self.gen_kwargs: dict[str, Any] = {**explicit, "pad_token_id": self.pad_id}
        if self.eos_ids:
            self.gen_kwargs["eos_token_id"] = sorted(self.eos_ids)
        self.format = options.response_format
        self.grammar = None
        if self.format is not None:
            if not self.eos_ids:
                raise ValueError(f"{model_dir}: response_format needs an eos token to end the value with")
            if self.beams > 1:
                raise ValueError(f"response_format decodes one sequence per row; the model uses num_beams={self.beams}")
            # compiled once per worker and device (the task is cached): every micro-batch shares it
            self.grammar = structured.compile_for(tok, int(config.vocab_size), sorted(self.eos_ids), self.format)
            self.value_type = structured.arrow_type(self.format)
        self.fields = template_fields(options.prompt_template) if options.prompt_template else None

    # -- interface --------------------------------------------------------------------------------
    @classmethod
    def check_model(cls, options: TaskOptions, files: ModelFiles) -> list[str]:
        assert isinstance(options, GenerateOptions)
        raw = files.read("generation_config.json")
        model_cfg = json.loads(raw) if raw else {}
        sampling = options.do_sample if options.do_sample is not None else bool(model_cfg.get("do_sample"))
        if not sampling and options.sampling_options():
            raise ValueError(f"{', '.join(options.sampling_options())} apply only when sampling, and the model's "
                             "generation config does not sample: set do_sample=true")
        if options.response_format is not None:
            if (options.num_beams or model_cfg.get("num_beams") or 1) > 1:
                raise ValueError("response_format decodes one sequence per row, and the model's generation config "
                                 f"uses num_beams={model_cfg.get('num_beams')}: set num_beams=1")
            structured.check_grammar(options.response_format)
        return []

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        details = [
            pa.field("text", pa.string()),
            pa.field("input_tokens", pa.int32()),
            pa.field("output_tokens", pa.int32()),
            pa.field("finish_reason", pa.string()),
        ]
        fmt = getattr(options, "response_format", None)
        if fmt is None:
            return pa.struct(details)
        value = structured.arrow_type(fmt)
        if getattr(options, "return_generation", False):
            return pa.struct([pa.field("value", value), *details])
        return value

    @classmethod
    def input_columns(cls, options: TaskOptions) -> list[str] | None:
        template = getattr(options, "prompt_template", None)
        return template_fields(template) if template else None

    def encode(self, values: Sequence[Any]) -> GenerateEncoding:
        tok = self.tokenizer
        prompts = [self.prompt(v) for v in values]
        if self.options.chat_template:
            texts = [
                tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                        add_generation_prompt=True)
                for p in prompts
            ]
            special = False  # the rendered template carries its own special tokens
        else:
            texts, special = prompts, True
        kw = {"add_special_tokens": special, "padding": False, "return_attention_mask": False,
              "return_token_type_ids": False}
        ids = [list(r) for r in tok(texts, truncation=False, **kw)["input_ids"]]
        long_rows = [j for j, r in enumerate(ids) if len(r) > self.max_length]
        if long_rows:
            cut = tok([texts[j] for j in long_rows], truncation=True, max_length=self.max_length, **kw)
            for j, r in zip(long_rows, cut["input_ids"], strict=True):
                ids[j] = list(r)
        for j, r in enumerate(ids):
            if not r:
                if self.seq2seq or self.bos_id is None:
                    raise ValueError("empty prompt (no tokens)")
                ids[j] = [self.bos_id]
        return GenerateEncoding(ids=ids, truncated=len(long_rows), extra={"prompts": prompts},
                                new_tokens=self.new_tokens, beams=self.beams)

    def prompt(self, value: Any) -> str:
        """The prompt text for one row (a str, or a dict of columns with a template)."""
        if self.fields is None:
            if isinstance(value, dict) and len(value) == 1:
                value = next(iter(value.values()))
            if not isinstance(value, str):
                raise TypeError(f"expected a string input, got {type(value).__name__}")
            return value
        if not isinstance(value, dict):
            if len(self.fields) == 1:
                value = {self.fields[0]: value}
            else:
                raise TypeError(f"prompt_template needs a row of columns {self.fields}, got {type(value).__name__}")
        missing = [f for f in self.fields if value.get(f) is None]
        if missing:
            raise ValueError(f"prompt_template field(s) {missing} null or missing in this row")
        return self.options.prompt_template.format(**{f: value[f] for f in self.fields})

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        if self.do_sample:
            # one row at a time, seeded by its prompt: independent of micro-batch composition
            prompts = encoding.extra["prompts"]
            results = []
            for i in idx:
                self._torch.manual_seed(row_seed(self.options.seed, prompts[i]))
                results.extend(self._generate(encoding, np.asarray([i])))
        else:
            results = self._generate(encoding, idx)
        texts, n_out, reasons = zip(*results, strict=True) if results else ((), (), ())
        details = [
            pa.array(texts, type=pa.string()),
            pa.array([len(encoding.ids[i]) for i in idx], type=pa.int32()),
            pa.array(n_out, type=pa.int32()),
            pa.array(reasons, type=pa.string()),
        ]
        if self.format is None:
            return pa.StructArray.from_arrays(details, fields=list(self.output_type))
        values, errors = structured.values(self.format, self.value_type, texts, reasons, self.new_tokens)
        if self.options.return_generation:
            out = pa.StructArray.from_arrays([values, *details], fields=list(self.output_type),
                                             mask=pa.array([e is not None for e in errors]))
        else:
            out = values
        return Scored(out, errors)

    # -- internals --------------------------------------------------------------------------------
    def _generate(self, encoding: Encoding, idx: np.ndarray) -> list[tuple[str, int, str]]:
        torch = self._torch
        ids, mask = self.pad(encoding, idx, left=not self.seq2seq)
        start = 1 if self.seq2seq else ids.shape[1]  # generated tokens begin here in the output
        kwargs = dict(self.gen_kwargs)
        if self.options.stop:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_stop_on_text(self._decode, self.options.stop, start, self.eos_ids)]
            )
        if self.grammar is not None:
            kwargs["logits_processor"] = structured.logits_processors(self.grammar)
        with torch.inference_mode():
            seqs = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        return [self._finish(row) for row in seqs[:, start:].cpu().tolist()]

    def _decode(self, ids: list[int]) -> str:
        # a constrained value is decoded as generated (no clean-up of spaces inside JSON strings)
        return self.tokenizer.decode(ids, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False if self.grammar is not None else None)

    def _finish(self, row: list[int]) -> tuple[str, int, str]:
        """(text, output_tokens, finish_reason) of one generated row (padding after its end ignored)."""
        k_eos = next((k for k, t in enumerate(row) if t in self.eos_ids), None)
        body = row if k_eos is None else row[:k_eos]
        text = self._decode(body)
        stops = self.options.stop
        if stops:
            hits = [p for p in (text.find(s) for s in stops) if p >= 0]
            if hits:
                # the shortest prefix whose text holds a stop string = the step generation stopped at
                k = bisect_left(range(1, len(body) + 1), True,
                                key=lambda n: any(s in self._decode(body[:n]) for s in stops)) + 1
                return text[: min(hits)], min(k, len(body)), "stop"
        if k_eos is not None:
            return text, k_eos + 1, "stop"
        return text, len(row), "length"


def _stop_on_text(decode, stops: list[str], start: int, eos_ids: set[int]):
    """A stopping criterion: a row is done once its generated text holds one of the stop strings.

    The same decode + search as `_finish`, so the step generation stops at is the step counted.
    """
    import torch
    from transformers import StoppingCriteria

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = []
            for row in input_ids[:, start:].tolist():
                k_eos = next((k for k, t in enumerate(row) if t in eos_ids), None)
                text = decode(row if k_eos is None else row[:k_eos])
                done.append(any(s in text for s in stops))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnText()
