"""Parity matrix: each task's outputs, element by element, against the model's own library on the
same rows (sentence-transformers' `encode`, transformers' pipelines, `model.generate`).

Models are tiny and random (tests/parity_models.py, tests/tiny_models.py), built once per module on
first use. The texts vary in length (one word to longer than every model's token limit), so
micro-batching, padding and truncation all take part; our runtime scores them in two input batches
of micro-batches of 4 rows, the references in their own batches.
"""

from __future__ import annotations

import random
from functools import partial

import numpy as np
import pytest
from parity_models import (
    GENERATION_CONFIG,
    POOLING_MODES,
    UNKNOWN_MODULE_TYPE,
    make_chat_gpt2,
    make_gpt2_with_generation_config,
    make_multi_label,
    make_nli,
    make_one_output,
    make_plain_bert,
    make_regression,
    make_single_label,
    make_st_decoder,
    make_st_legacy,
    make_st_model,
    make_st_prompt_model,
    make_st_unknown_module,
    make_t5_with_generation_config,
)
from tiny_models import WORDS, make_tiny_gpt2, make_tiny_t5

from spark_infer.errors import ConfigError
from spark_infer.runtime import RuntimeOptions, make_spec, score_stream

#: element-wise tolerance (fp32 on CPU; batch composition differs between us and the references)
TOL = 1e-5
BATCH_SIZE = 4
MAX_NEW_TOKENS = 12


def _texts(n: int = 30, seed: int = 1234) -> list[str]:
    """Texts over WORDS: 1 to 90 words (the tokenizers keep 64 tokens), some capitalised, some with
    out-of-vocabulary words and punctuation, in an order that mixes lengths within a micro-batch."""
    rng = random.Random(seed)
    lengths = [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 70, 90] + [rng.randint(1, 40) for _ in range(n - 12)]
    rng.shuffle(lengths)
    texts = []
    for k, size in enumerate(lengths):
        words = [rng.choice(WORDS) for _ in range(size)]
        if k % 5 == 1:
            words[0] = words[0].upper()
        if k % 7 == 3:
            words.insert(size // 2, "zebra")  # out of vocabulary
        if k % 4 == 2:
            words.append("!")
        texts.append(" ".join(words))
    return texts


TEXTS = _texts()
#: generation prompts: short enough that no prompt is truncated
PROMPTS = [t for t in TEXTS if len(t.split()) <= 30][:16]


# ------------------------------------------------------------------------------------------ models

BUILDERS = {
    # sentence-transformers: every pooling mode, bare (no Dense, no Normalize) and Dense + Normalize
    **{f"st_{m}": partial(make_st_model, pooling=m, seed=i) for i, m in enumerate(POOLING_MODES)},
    **{f"st_{m}_dense_norm": partial(make_st_model, pooling=m, dense=True, normalize=True, seed=40 + i)
       for i, m in enumerate(POOLING_MODES)},
    "st_mean_dense": partial(make_st_model, pooling="mean", dense=True, seed=50),  # dot-product model
    "st_cls_norm": partial(make_st_model, pooling="cls", normalize=True, seed=51),
    "st_mean_msl16": partial(make_st_model, pooling="mean", max_seq_length=16, seed=52),
    "st_prompt": make_st_prompt_model,
    "st_legacy_cls": make_st_legacy,
    "st_legacy_mean_norm": partial(make_st_legacy, pooling="mean", normalize=True, seed=4),
    "st_legacy_subfolder": partial(make_st_legacy, pooling="mean", transformer_dir="0_Transformer",
                                   max_seq_length=20, seed=6),
    "st_legacy_cls_mean": partial(make_st_legacy, pooling=("cls", "mean"), normalize=True, seed=8),
    "st_legacy_dense_norm": partial(make_st_legacy, pooling="mean", dense=True, normalize=True, seed=9),
    "st_decoder": make_st_decoder,
    "st_decoder_prompt": partial(make_st_decoder, pooling="mean", normalize=False, include_prompt=False,
                                 prompts={"query": "query: the text of "}, seed=12),
    "plain_bert": make_plain_bert,
    "st_unknown_module": make_st_unknown_module,
    # classifiers
    "cls_single": make_single_label,
    "cls_multi": make_multi_label,
    "cls_one": make_one_output,
    "cls_regression": make_regression,
    "nli_entail_last": partial(make_nli, layout="entail_last"),
    "nli_entail_first": partial(make_nli, layout="entail_first"),
    # generators
    "gen_t5": make_tiny_t5,
    "gen_gpt2": make_tiny_gpt2,
    "gen_chat": make_chat_gpt2,
    "gen_config": make_gpt2_with_generation_config,
    "gen_config_max_new": partial(make_gpt2_with_generation_config,
                                  config={**GENERATION_CONFIG, "max_new_tokens": 7}),
    "gen_t5_max_length": partial(make_t5_with_generation_config, config={"max_length": 8}),
    "gen_gpt2_max_length": partial(make_gpt2_with_generation_config, config={"max_length": 40}),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """`model_dir(name)`: the folder of BUILDERS[name], built on first use (once per module)."""
    root = tmp_path_factory.mktemp("parity-models")
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            built[name] = BUILDERS[name](str(root / name))
        return built[name]

    return get


def ours(task: str, model: str, rows: list[str], batch_size: int = BATCH_SIZE, **options) -> list:
    """Our outputs (`to_pylist`) for `rows`, scored in two input batches (17 + the rest)."""
    spec = make_spec(task, model, **options)
    outputs, errors = [], []
    for out, err in score_stream(spec, RuntimeOptions(device="cpu", batch_size=batch_size),
                                 [rows[:17], rows[17:]]):
        outputs += out.to_pylist()
        errors += err.to_pylist()
    assert len(outputs) == len(rows)
    assert all(e is None for e in errors), [e for e in errors if e is not None][:3]
    return outputs


def _as_dict(m) -> dict:
    """A pyarrow map value as a dict (to_pylist gives a list of (key, value) pairs)."""
    return dict(m) if m is not None else {}


def assert_close(got, ref, what: str) -> None:
    got = np.asarray(got, dtype=np.float32)
    ref = np.asarray(ref, dtype=np.float32)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    err = np.abs(got - ref)
    row = int(np.unravel_index(err.argmax(), err.shape)[0]) if err.size else -1
    assert err.max(initial=0.0) <= TOL, f"{what}: max |ours - reference| = {err.max():.3g} (row {row})"


def assert_top_label(label: str, score: float, ranked: list[tuple[str, float]], what: str) -> None:
    """Our (label, score) is the reference's top label and score; a different label only where the
    reference ties it with the top one (within TOL)."""
    top_label, top_score = ranked[0]
    assert abs(score - top_score) <= TOL, f"{what}: score {score} != reference {top_score} ({top_label})"
    if label != top_label:
        other = dict(ranked).get(label)
        assert other is not None and abs(other - top_score) <= TOL, (
            f"{what}: label {label!r} != reference {top_label!r} (reference scores {ranked})")


# ------------------------------------------------------------------------------------------- embed

_ST_CACHE: dict[str, object] = {}


def _st(path: str):
    from sentence_transformers import SentenceTransformer

    if path not in _ST_CACHE:
        _ST_CACHE[path] = SentenceTransformer(path, device="cpu")
    return _ST_CACHE[path]


def st_reference(path: str, texts: list[str], *, normalize: bool | None = None,
                 prompt_name: str | None = None, prompt: str | None = None,
                 max_length: int | None = None) -> np.ndarray:
    """`SentenceTransformer.encode` as our embed options ask: normalize=False on a model with
    Normalize runs its modules without it; normalize=True on one without adds the L2 normalisation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize

    st = _st(path)
    has_normalize = any(isinstance(m, Normalize) for m in st)
    model = st
    if (normalize is False and has_normalize) or max_length is not None:
        model = SentenceTransformer(
            modules=[m for m in SentenceTransformer(path, device="cpu")
                     if not (normalize is False and isinstance(m, Normalize))],
            device="cpu", prompts=st.prompts, default_prompt_name=st.default_prompt_name,
        )
        if max_length is not None:
            model.max_seq_length = max_length
    kw = {k: v for k, v in (("prompt_name", prompt_name), ("prompt", prompt)) if v is not None}
    emb = model.encode(texts, convert_to_numpy=True, **kw)
    if normalize is True and not has_normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


EMBED_CASES = [
    *[(f"st_{m}", {}) for m in POOLING_MODES],
    *[(f"st_{m}_dense_norm", {}) for m in POOLING_MODES],
    ("st_mean_dense", {}),
    ("st_cls_norm", {}),
    ("st_mean_msl16", {}),  # max_seq_length 16 (saved as the tokenizer's model_max_length)
    ("st_mean_dense", {"normalize": True}),  # no Normalize module: ours L2-normalises
    ("st_mean_dense_norm", {"normalize": False}),  # the stack without its Normalize
    ("st_cls_norm", {"normalize": True}),
    ("st_mean", {"normalize": False}),
    ("st_mean_dense_norm", {"max_length": 8}),
    ("st_prompt", {}),  # default_prompt_name "query"
    ("st_prompt", {"prompt_name": "query"}),
    ("st_prompt", {"prompt_name": "passage"}),
    ("st_prompt", {"prompt": "the customer said "}),
    ("st_prompt", {"prompt": ""}),  # an explicit empty prompt overrides the default prompt
    ("st_prompt", {"prompt_name": "document"}),  # "" (sentence-transformers adds it on save)
    ("st_prompt", {"prompt_name": "passage", "normalize": False}),
    ("st_prompt", {"max_length": 10}),  # the prompt's tokens count in the limit
    ("st_legacy_cls", {}),  # sentence-transformers < 6 format, CLS, max_seq_length 12
    ("st_legacy_cls", {"normalize": True}),
    ("st_legacy_mean_norm", {}),
    ("st_legacy_subfolder", {}),  # the transformer in 0_Transformer/, max_seq_length 20
    ("st_legacy_cls_mean", {}),  # two pooling modes: CLS and mean concatenated (64 floats)
    ("st_legacy_dense_norm", {}),  # old-format Dense (safetensors) + Normalize
    ("st_legacy_dense_norm", {"normalize": False}),
    ("st_decoder", {}),  # Qwen3, left padding, last token, Normalize
    ("st_decoder", {"normalize": False}),
    ("st_decoder", {"max_length": 6}),  # truncation keeps the appended <|endoftext|>
    ("st_decoder_prompt", {"prompt_name": "query"}),  # left padding + prompt left out of the mean
    ("st_decoder_prompt", {"prompt": "data : "}),
]


def _case_id(case) -> str:
    name, opts = case
    return name + "".join(f"-{k}={v!r}" for k, v in opts.items())


@pytest.mark.parametrize("case", EMBED_CASES, ids=[_case_id(c) for c in EMBED_CASES])
def test_embed_matches_sentence_transformers(model_dir, case) -> None:
    name, opts = case
    path = model_dir(name)
    ref = st_reference(path, TEXTS, **opts)
    got = ours("embed", path, TEXTS, **opts)
    assert all(v is not None for v in got)
    assert_close(got, ref, f"embed {_case_id(case)}")


def test_embed_reference_models_are_what_they_claim(model_dir) -> None:
    """The matrix's premises: the older-format folder loads as CLS with its own max_seq_length,
    prompts and include_prompt=False change the embedding, the decoder pads on the left."""
    legacy = _st(model_dir("st_legacy_cls"))
    assert legacy[1].pooling_mode == "cls" and legacy.max_seq_length == 12 and len(legacy) == 2
    prompt = _st(model_dir("st_prompt"))
    assert prompt.default_prompt_name == "query" and prompt[1].include_prompt is False
    q, p, none = (prompt.encode(TEXTS[:4], **kw) for kw in ({}, {"prompt_name": "passage"}, {"prompt": ""}))
    assert np.abs(q - p).max() > 1e-3 and np.abs(q - none).max() > 1e-3
    assert _st(model_dir("st_decoder")).tokenizer.padding_side == "left"
    assert _st(model_dir("st_legacy_subfolder")).max_seq_length == 20
    assert _st(model_dir("st_legacy_cls_mean")).get_embedding_dimension() == 64
    from safetensors.torch import load_file

    saved = load_file(f"{model_dir('st_legacy_dense_norm')}/2_Dense/model.safetensors")
    assert np.array_equal(_st(model_dir("st_legacy_dense_norm"))[2].linear.bias.detach().numpy(),
                          saved["linear.bias"].numpy())


def test_embed_plain_hf_folder_is_mean_pooled_and_normalised(model_dir) -> None:
    """A folder without modules.json: our documented default, mean pooling + L2 normalisation,
    computed here by hand from AutoModel's hidden states (truncated at the tokenizer's 64 tokens)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = model_dir("plain_bert")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    enc = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert_close(ours("embed", path, TEXTS), ref, "embed plain HF folder")


def test_embed_refuses_unknown_module_type(model_dir) -> None:
    with pytest.raises(ConfigError, match=UNKNOWN_MODULE_TYPE.replace(".", r"\.")):
        make_spec("embed", model_dir("st_unknown_module"))


def test_embed_unknown_prompt_name_is_a_config_error(model_dir) -> None:
    """sentence-transformers refuses a prompt name the model does not define; so do we, at plan time."""
    with pytest.raises(ConfigError, match="nope"):
        make_spec("embed", model_dir("st_prompt"), prompt_name="nope")


# ---------------------------------------------------------------------------------------- classify

_PIPES: dict[tuple[str, str], object] = {}


def _pipe(kind: str, path: str):
    from transformers import pipeline

    if (kind, path) not in _PIPES:
        kw = {"top_k": None} if kind == "text-classification" else {}
        _PIPES[kind, path] = pipeline(kind, model=path, tokenizer=path, device="cpu", **kw)
    return _PIPES[kind, path]


def classify_reference(path: str, texts: list[str], function_to_apply: str) -> list[list[tuple[str, float]]]:
    """The text-classification pipeline's scores, every label, best first. `truncation=True`: the
    pipeline does not truncate by default, we truncate at the model's limit (64 tokens here)."""
    kw = {} if function_to_apply == "default" else {"function_to_apply": function_to_apply}
    out = _pipe("text-classification", path)(texts, truncation=True, **kw)
    return [[(d["label"], d["score"]) for d in row] for row in out]


CLASSIFIERS = ["cls_single", "cls_multi", "cls_one", "cls_regression"]
FUNCTIONS = ["default", "sigmoid", "softmax", "none"]


@pytest.mark.parametrize("function_to_apply", FUNCTIONS)
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classify_matches_pipeline(model_dir, name: str, function_to_apply: str) -> None:
    path = model_dir(name)
    ref = classify_reference(path, TEXTS, function_to_apply)
    opts = {} if function_to_apply == "default" else {"function_to_apply": function_to_apply}
    got = ours("classify", path, TEXTS, **opts)
    for i, (row, r) in enumerate(zip(got, ref, strict=True)):
        assert_top_label(row["label"], row["score"], r, f"classify {name} {function_to_apply} row {i}")


@pytest.mark.parametrize("function_to_apply", ["default", "none"])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classify_top_k_and_all_scores_match_pipeline(model_dir, name: str, function_to_apply: str) -> None:
    path = model_dir(name)
    ref = classify_reference(path, TEXTS, function_to_apply)
    top_k = 2
    opts = {} if function_to_apply == "default" else {"function_to_apply": function_to_apply}
    got = ours("classify", path, TEXTS, top_k=top_k, return_all_scores=True, **opts)
    for i, (row, r) in enumerate(zip(got, ref, strict=True)):
        what = f"classify {name} row {i}"
        assert_top_label(row["label"], row["score"], r, what)
        top = [(t["label"], t["score"]) for t in row["top"]]
        assert len(top) == min(top_k, len(r)), f"{what}: top {top}"
        assert [s for _, s in top] == sorted((s for _, s in top), reverse=True), f"{what}: top {top}"
        assert_close([s for _, s in top], [s for _, s in r[:top_k]], f"{what}: top scores")
        ref_scores = dict(r)
        for lab, s in top:
            assert abs(ref_scores[lab] - s) <= TOL, f"{what}: top {lab} {s} != {ref_scores[lab]}"
        probs = _as_dict(row["probabilities"])
        assert set(probs) == set(ref_scores), f"{what}: probabilities labels {sorted(probs)}"
        assert_close([probs[k] for k in ref_scores], list(ref_scores.values()), f"{what}: probabilities")


# --------------------------------------------------------------------------------------- zero_shot

ZS_LABELS = ["good", "bad", "price", "service"]
ZS_TEMPLATE = "this text is about {label} ."


@pytest.mark.parametrize("mode", ["auto", "nli"])
@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("name", ["nli_entail_last", "nli_entail_first"])
def test_zero_shot_nli_matches_pipeline(model_dir, name: str, multi_label: bool, mode: str) -> None:
    path = model_dir(name)
    ref = _pipe("zero-shot-classification", path)(
        TEXTS, candidate_labels=ZS_LABELS, hypothesis_template=ZS_TEMPLATE.replace("{label}", "{}"),
        multi_label=multi_label,
    )
    got = ours("zero_shot", path, TEXTS, mode=mode, labels=ZS_LABELS, hypothesis_template=ZS_TEMPLATE,
               multi_label=multi_label, return_all_scores=True)
    for i, (row, r) in enumerate(zip(got, ref, strict=True)):
        what = f"zero_shot {name} multi_label={multi_label} row {i}"
        ranked = list(zip(r["labels"], r["scores"], strict=True))
        assert_top_label(row["label"], row["score"], ranked, what)
        scores = _as_dict(row["scores"])
        assert set(scores) == set(ZS_LABELS), f"{what}: scores labels {sorted(scores)}"
        assert_close([scores[lab] for lab, _ in ranked], [s for _, s in ranked], f"{what}: scores")


@pytest.mark.parametrize("mode", ["auto", "embedding"])
@pytest.mark.parametrize("name", ["st_mean_dense", "st_cls_norm"])
def test_zero_shot_embedding_matches_sentence_transformers(model_dir, name: str, mode: str) -> None:
    """Embedding mode (auto picks it for a sentence-transformers model): softmax over the cosines
    (temperature 0.05) of `encode`d texts and label descriptions, L2-normalised."""
    path = model_dir(name)
    emb = st_reference(path, TEXTS, normalize=True)
    labels = st_reference(path, [ZS_TEMPLATE.format(label=lab) for lab in ZS_LABELS], normalize=True)
    logits = emb @ labels.T / 0.05
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    got = ours("zero_shot", path, TEXTS, mode=mode, labels=ZS_LABELS, hypothesis_template=ZS_TEMPLATE,
               return_all_scores=True)
    for i, (row, p) in enumerate(zip(got, probs, strict=True)):
        what = f"zero_shot {name} mode={mode} row {i}"
        ranked = sorted(zip(ZS_LABELS, p.tolist(), strict=True), key=lambda x: -x[1])
        assert_top_label(row["label"], row["score"], ranked, what)
        scores = _as_dict(row["scores"])
        assert_close([scores[lab] for lab in ZS_LABELS], p, f"{what}: scores")


# ---------------------------------------------------------------------------------------- generate

_GEN: dict[str, tuple] = {}


def _generator(path: str):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    if path not in _GEN:
        seq2seq = AutoConfig.from_pretrained(path).is_encoder_decoder
        cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        _GEN[path] = (AutoTokenizer.from_pretrained(path), cls.from_pretrained(path).eval(), seq2seq)
    return _GEN[path]


def generate_reference(path: str, prompts: list[str], chat_template: bool = False, **kw) -> list[str]:
    """`model.generate(**enc, **kw)` one prompt at a time (no padding), the new tokens decoded without
    special tokens; with `chat_template` the prompt is the templated user message, tokenized without
    special tokens (as `apply_chat_template(tokenize=True)` does)."""
    import torch

    tok, model, seq2seq = _generator(path)
    texts = []
    for p in prompts:
        if chat_template:
            templated = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                add_generation_prompt=True)
            enc = tok(templated, return_tensors="pt", add_special_tokens=False)
        else:
            enc = tok(p, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, **kw)
        start = 0 if seq2seq else enc["input_ids"].shape[1]
        texts.append(tok.decode(out[0][start:], skip_special_tokens=True))
    return texts


N = {"max_new_tokens": MAX_NEW_TOKENS}
GEN_CASES = [
    ("gen_t5", N),
    ("gen_t5", {**N, "num_beams": 3, "length_penalty": 2.0}),
    ("gen_gpt2", N),
    ("gen_gpt2", {**N, "num_beams": 2, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2,
                  "min_new_tokens": 2, "length_penalty": 0.5}),
    ("gen_chat", {**N, "chat_template": True}),
    ("gen_config", N),  # generation_config.json: beams 2, repetition penalty, no-repeat 2-grams, min 3
    ("gen_config", {**N, "num_beams": 1, "no_repeat_ngram_size": 0}),  # options set override the config
    ("gen_config_max_new", {}),  # ... and max_new_tokens 7: nothing set here
    ("gen_t5_max_length", {}),  # generation_config.json max_length 8 (decoder tokens)
    ("gen_gpt2_max_length", {}),  # generation_config.json max_length 40 (prompt included): batch_size 1
]
#: cases run one row per micro-batch. A decoder-only model's generation-config `max_length` counts the
#: prompt, and in a left-padded batch the padded prompt: transformers' own batched generate gives the
#: shorter prompts of a batch fewer new tokens than they get alone (rows 0, 8 and 11 of PROMPTS in
#: batches of 4: 11, 16, 16 words instead of 19, 20, 17), so batched rows match the one-prompt-at-a-time
#: reference only where their batch's prompts are equally long or they end (eos) first
ONE_ROW_BATCHES = {"gen_gpt2_max_length"}


@pytest.mark.parametrize("case", GEN_CASES, ids=[_case_id(c) for c in GEN_CASES])
def test_generate_matches_model_generate(model_dir, case) -> None:
    # otherwise batch_size 4 (left-padded batches): with these models transformers' own batched
    # generate gives the same texts as one prompt at a time, so a difference here is ours
    name, opts = case
    path = model_dir(name)
    ref = generate_reference(path, PROMPTS, **opts)
    assert len(set(ref)) > len(PROMPTS) // 2  # varied outputs, not one repeated string
    got = ours("generate", path, PROMPTS, batch_size=1 if name in ONE_ROW_BATCHES else BATCH_SIZE, **opts)
    diffs = [(i, PROMPTS[i], g["text"], r)
             for i, (g, r) in enumerate(zip(got, ref, strict=True)) if g["text"] != r]
    assert not diffs, f"generate {_case_id(case)}: {len(diffs)}/{len(ref)} rows differ, first: {diffs[:2]}"


def test_generation_config_changes_the_reference(model_dir) -> None:
    """The generation-config cases mean something: each folder's config changes the texts."""
    greedy = {"num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0}
    assert set(greedy) == set(GENERATION_CONFIG)
    path = model_dir("gen_config")
    assert generate_reference(path, PROMPTS[:6], **N) != generate_reference(path, PROMPTS[:6], **N, **greedy)
    lengths = [len(t.split()) for t in generate_reference(model_dir("gen_config_max_new"), PROMPTS)]
    assert max(lengths) == 7, lengths
    lengths = [len(t.split()) for t in generate_reference(model_dir("gen_t5_max_length"), PROMPTS)]
    assert max(lengths) == 7, lengths  # 8 decoder tokens: the start token and 7 new ones


# ------------------------------------------------------------------------------------- Spark UDF


def test_spark_udf_two_embedding_models_in_one_select(spark, model_dir) -> None:
    """Two embed UDFs (a Dense dot-product model without Normalize, the prompt model with its default
    prompt and include_prompt=False) in one select, through Spark's Python workers."""
    from spark_infer.udf import predict_udf

    dense, prompt = model_dir("st_mean_dense"), model_dir("st_prompt")
    e_dense = predict_udf("embed", model=dense, batch_size=BATCH_SIZE)
    e_prompt = predict_udf("embed", model=prompt, batch_size=BATCH_SIZE)
    # one partition (one Python worker importing torch and sentence-transformers: 2 cost ~35 s more
    # on 2 busy cores), in Arrow batches of 16 rows: two batches, the second partly filled
    df = spark.createDataFrame(list(enumerate(TEXTS)), "id int, text string").coalesce(1)
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, "16")
    try:
        rows = sorted(df.select("id", e_dense("text").alias("d"), e_prompt("text").alias("p")).collect())
    finally:
        spark.conf.set(key, before)
    assert [r["id"] for r in rows] == list(range(len(TEXTS)))
    assert_close([r["d"] for r in rows], st_reference(dense, TEXTS), "udf dense model")
    assert_close([r["p"] for r in rows], st_reference(prompt, TEXTS), "udf prompt model")
