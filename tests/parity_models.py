"""Tiny random-weight models for the parity tests (tests/test_parity.py), each built in a folder.

Every builder writes safetensors weights from a fixed seed (hidden size 32, 2 layers, a word-level
vocabulary over `tiny_models.WORDS`), returns the folder and runs in well under 2 s once torch,
transformers and sentence-transformers are imported:

* sentence-transformers folders saved with sentence-transformers' own API (`make_st_model`: any
  pooling mode, optional Dense and Normalize, prompts, `include_prompt`), one written by hand in the
  format of sentence-transformers < 6 (`make_st_legacy`), a decoder embedder (`make_st_decoder`:
  Qwen3, left padding, last-token pooling), and a folder listing a module that is not
  sentence-transformers' (`make_st_unknown_module`);
* sequence classifiers: single-label, multi-label (`problem_type`), one output, regression
  (`make_classifier`), and NLI models whose tokenizer encodes text pairs (`make_nli`);
* generators: a causal model with a chat template (`make_chat_gpt2`), and tiny_models' GPT-2 and T5
  with a generation config that sets non-default decoding (`make_gpt2_with_generation_config`,
  `make_t5_with_generation_config`); tiny_models has the plain T5 and GPT-2.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from tiny_models import (
    WORDS,
    _bert_config,
    _word_level_tokenizer,
    make_tiny_bert,
    make_tiny_gpt2,
    make_tiny_t5,
)

#: pooling modes of sentence-transformers' Pooling module
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

#: prompts of the prompt model (`make_st_model(..., prompts=PROMPTS)`): their lengths differ, so an
#: embedding computed with the wrong prompt, or with the prompt pooled, differs
PROMPTS = {"query": "query: ", "passage": "passage: the text of "}


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


# --------------------------------------------------------------------------------------- tokenizers


def _pair_tokenizer(path: str, model_max_length: int = 64) -> int:
    """The tiny_models word-level BERT tokenizer, plus text pairs ([CLS] A [SEP] B [SEP], B typed 1)."""
    return _word_level_tokenizer(path, pair=True, model_max_length=model_max_length)


def _causal_tokenizer(path: str, *, append_eos: bool, prepend_bos: bool, padding_side: str,
                      chat_template: str | None = None, pad_is_eos: bool = False) -> int:
    """A word-level tokenizer for decoder models: `<|endoftext|>` (bos/eos), `<unk>`, chat markers
    `<|user|>` / `<|assistant|>` (special, matched before pre-tokenization), WORDS and punctuation."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    vocab = {eos: 0, "<unk>": 1, "<|user|>": 2, "<|assistant|>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    for ch in ".,:;!?-":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    specials = [t for t in vocab if t.startswith("<")]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if append_eos or prepend_bos:
        single = " ".join(([eos] if prepend_bos else []) + ["$A"] + ([eos] if append_eos else []))
        tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[(eos, 0)])
    kw = {"pad_token": eos} if pad_is_eos else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token="<unk>", model_max_length=64,
        padding_side=padding_side, **kw,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return len(vocab)


# ------------------------------------------------------------------------------- sentence-transformers


def make_st_model(path: str, pooling: str = "mean", *, dense: bool = False, normalize: bool = False,
                  prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
                  include_prompt: bool = True, max_seq_length: int | None = None, seed: int = 0) -> str:
    """A sentence-transformers folder over a tiny BERT, saved by `SentenceTransformer.save`:
    Transformer -> Pooling(`pooling`, `include_prompt`) [-> Dense 32->16 tanh] [-> Normalize]."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    src = tempfile.mkdtemp(prefix="st-src-")
    try:
        make_tiny_bert(src, seed=seed)
        kw = {"max_seq_length": max_seq_length} if max_seq_length else {}
        modules = [Transformer(src, **kw)]
        modules.append(Pooling(modules[0].get_embedding_dimension(), pooling_mode=pooling,
                               include_prompt=include_prompt))
        if dense:
            torch.manual_seed(seed + 1000)
            modules.append(Dense(32, 16, activation_function=torch.nn.Tanh()))
        if normalize:
            modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu", prompts=prompts,
                                 default_prompt_name=default_prompt_name)
        st.save(path)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return path


def make_st_prompt_model(path: str, seed: int = 7) -> str:
    """Prompts {"query", "passage"} with "query" the default prompt; the prompt is not pooled
    (mean pooling, include_prompt=False), then Normalize."""
    return make_st_model(path, "mean", normalize=True, prompts=dict(PROMPTS), default_prompt_name="query",
                         include_prompt=False, seed=seed)


def make_st_legacy(path: str, pooling: str | tuple[str, ...] = "cls", *, dense: bool = False,
                   normalize: bool = False, max_seq_length: int = 12, transformer_dir: str = "",
                   seed: int = 3) -> str:
    """A sentence-transformers folder in the format of sentence-transformers < 6, written by hand:
    modules.json typed `sentence_transformers.models.*`, `1_Pooling/config.json` with the
    `pooling_mode_*_token(s)` booleans (several modes: their embeddings concatenated) and
    `word_embedding_dimension`, and `sentence_bert_config.json` with `max_seq_length` (shorter than
    the tokenizer's 64: the folder's own limit truncates). `transformer_dir` (e.g. "0_Transformer")
    puts the transformer, its tokenizer and its sentence_bert_config.json in a module folder, as the
    oldest folders do. `dense`: a `sentence_transformers.models.Dense` (32 -> 16, tanh) in the old
    config keys, its weights in safetensors."""
    modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    assert set(modes) <= {"cls", "mean", "max", "mean_sqrt_len_tokens"}, modes
    make_tiny_bert(os.path.join(path, transformer_dir), seed=seed)
    modules = [
        {"idx": 0, "name": "0", "path": transformer_dir, "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if dense:
        import torch
        from safetensors.torch import save_file

        modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                        "type": "sentence_transformers.models.Dense"})
        os.makedirs(os.path.join(path, "2_Dense"), exist_ok=True)
        _write_json(os.path.join(path, "2_Dense", "config.json"), {
            "in_features": 32 * len(modes), "out_features": 16, "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        })
        gen = torch.Generator().manual_seed(seed + 1000)
        save_file({"linear.weight": torch.randn(16, 32 * len(modes), generator=gen) * 0.3,
                   "linear.bias": torch.randn(16, generator=gen) * 0.1},
                  os.path.join(path, "2_Dense", "model.safetensors"))
    if normalize:
        k = len(modules)
        modules.append({"idx": k, "name": str(k), "path": f"{k}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        os.makedirs(os.path.join(path, f"{k}_Normalize"), exist_ok=True)
    _write_json(os.path.join(path, "modules.json"), modules)
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    _write_json(os.path.join(path, "1_Pooling", "config.json"), {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": "cls" in modes,
        "pooling_mode_mean_tokens": "mean" in modes,
        "pooling_mode_max_tokens": "max" in modes,
        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens" in modes,
    })
    _write_json(os.path.join(path, transformer_dir, "sentence_bert_config.json"),
                {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write_json(os.path.join(path, "config_sentence_transformers.json"),
                {"__version__": {"sentence_transformers": "2.2.2", "transformers": "4.30.2",
                                 "pytorch": "2.0.1"}})
    return path


def make_plain_bert(path: str, seed: int = 5) -> str:
    """A plain Hugging Face folder (BertModel + tokenizer), no modules.json."""
    return make_tiny_bert(path, seed=seed)


def make_st_decoder(path: str, pooling: str = "lasttoken", *, normalize: bool = True,
                    prompts: dict[str, str] | None = None, include_prompt: bool = True,
                    seed: int = 11) -> str:
    """A decoder embedder: a tiny Qwen3 (`AutoModel`), a tokenizer that appends `<|endoftext|>` and
    pads with it on the left; sentence-transformers Transformer -> Pooling(`pooling`) [-> Normalize]."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import Qwen3Config, Qwen3Model

    src = tempfile.mkdtemp(prefix="st-dec-src-")
    try:
        n = _causal_tokenizer(src, append_eos=True, prepend_bos=False, padding_side="left", pad_is_eos=True)
        cfg = Qwen3Config(
            vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=128, bos_token_id=0,
            eos_token_id=0, pad_token_id=0, tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        Qwen3Model(cfg).eval().save_pretrained(src, safe_serialization=True)
        modules = [Transformer(src), Pooling(32, pooling_mode=pooling, include_prompt=include_prompt)]
        if normalize:
            modules.append(Normalize())
        SentenceTransformer(modules=modules, device="cpu", prompts=prompts).save(path)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return path


#: the module type `make_st_unknown_module` lists
UNKNOWN_MODULE_TYPE = "my_package.MyModule"


def make_st_unknown_module(path: str) -> str:
    """A sentence-transformers folder whose modules.json lists a module that is not
    sentence-transformers' (`my_package.MyModule`) after Transformer and Pooling."""
    make_st_model(path, "mean", seed=13)
    with open(os.path.join(path, "modules.json")) as f:
        modules = json.load(f)
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": "9_MyModule",
                    "type": UNKNOWN_MODULE_TYPE})
    os.makedirs(os.path.join(path, "9_MyModule"), exist_ok=True)
    _write_json(os.path.join(path, "9_MyModule", "config.json"), {"scale": 2.0})
    _write_json(os.path.join(path, "modules.json"), modules)
    return path


# ------------------------------------------------------------------------------------ classifiers


def make_classifier(path: str, labels: tuple[str, ...], *, problem_type: str | None = None,
                    seed: int = 17) -> str:
    """A tiny BertForSequenceClassification: `labels` named in id2label (one label: one output, which
    the pipeline passes through a sigmoid), `problem_type` e.g. "multi_label_classification"."""
    import torch
    from transformers import BertForSequenceClassification

    os.makedirs(path, exist_ok=True)
    n = _pair_tokenizer(path)
    kw = {"problem_type": problem_type} if problem_type else {}
    # a larger init than BERT's 0.02 makes the random logits depend on the text: the top label varies
    # over the test texts (0.02: one label for every text). Not larger: float32 rounding differences
    # between batch compositions grow with the weights (logits: ~3e-6 at 0.3, up to 1.5e-5 at 0.5,
    # beyond the parity tests' 1e-5)
    cfg = _bert_config(n, num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={lab: i for i, lab in enumerate(labels)}, initializer_range=0.3, **kw)
    torch.manual_seed(seed)
    BertForSequenceClassification(cfg).eval().save_pretrained(path, safe_serialization=True)
    return path


def make_single_label(path: str) -> str:
    return make_classifier(path, ("negative", "neutral", "positive"), seed=17)


def make_multi_label(path: str) -> str:
    return make_classifier(path, ("price", "service", "quality", "battery"),
                           problem_type="multi_label_classification", seed=19)


def make_one_output(path: str) -> str:
    return make_classifier(path, ("relevance",), seed=23)


def make_regression(path: str) -> str:
    """One output with problem_type "regression": the pipeline applies no function by default."""
    return make_classifier(path, ("similarity",), problem_type="regression", seed=31)


#: the two entailment-id layouts of `make_nli`
NLI_LAYOUTS = {
    "entail_last": ("contradiction", "neutral", "entailment"),
    "entail_first": ("ENTAILMENT", "NEUTRAL", "CONTRADICTION"),
}


def make_nli(path: str, layout: str = "entail_last", seed: int = 29) -> str:
    """An NLI classifier (3 labels, `layout` of NLI_LAYOUTS) whose tokenizer encodes text pairs."""
    return make_classifier(path, NLI_LAYOUTS[layout], seed=seed)


# ------------------------------------------------------------------------------------- generators

#: a plain Jinja chat template: bos, `<|role|> content` per message, `<|assistant|>` to generate
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tiny_gpt2(path: str, n: int, seed: int):
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=n, n_embd=32, n_layer=2, n_head=2, n_positions=128, n_inner=64, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0)
    return model


def make_chat_gpt2(path: str, seed: int = 2) -> str:
    """A tiny GPT-2 whose tokenizer has a chat template (`CHAT_TEMPLATE`, which writes the bos
    itself) and prepends bos when it adds special tokens: a templated prompt tokenized with special
    tokens would start with two bos tokens (`apply_chat_template` tokenizes without them)."""
    os.makedirs(path, exist_ok=True)
    n = _causal_tokenizer(path, append_eos=False, prepend_bos=True, padding_side="left",
                          chat_template=CHAT_TEMPLATE)
    _tiny_gpt2(path, n, seed).save_pretrained(path, safe_serialization=True)
    return path


#: the non-default decoding `make_gpt2_with_generation_config` saves in generation_config.json
GENERATION_CONFIG = {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2, "num_beams": 2,
                     "min_new_tokens": 3}


def make_gpt2_with_generation_config(path: str, config: dict | None = None, seed: int = 1) -> str:
    """tiny_models.make_tiny_gpt2 (same weights) whose generation_config.json adds `config`
    (default `GENERATION_CONFIG`) to its bos/eos ids."""
    from transformers import GenerationConfig

    make_tiny_gpt2(path, seed=seed)
    cfg = GENERATION_CONFIG if config is None else config
    GenerationConfig(bos_token_id=0, eos_token_id=0, **cfg).save_pretrained(path)
    return path


def make_t5_with_generation_config(path: str, config: dict, seed: int = 1) -> str:
    """tiny_models.make_tiny_t5 (same weights) whose generation_config.json adds `config`."""
    from transformers import GenerationConfig

    make_tiny_t5(path, seed=seed)
    GenerationConfig(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **config).save_pretrained(path)
    return path
