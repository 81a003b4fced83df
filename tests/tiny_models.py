"""Tiny random-initialised Hugging Face models built in a temp dir (fast, offline, real code paths)."""

from __future__ import annotations

import json
import os

WORDS = (
    "the a an and or of to in on for with is are was were be this that it as at by from spark delta "
    "model data table row rows text good bad great terrible happy sad price product customer churn "
    "fast slow quality service love hate ok fine movie film book music food phone battery screen"
).split()


def _word_level_tokenizer(path: str) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=64,
    )
    fast.save_pretrained(path)
    return len(vocab)


def _bert_config(vocab_size: int, **kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, **kw,
    )


def make_tiny_bert(path: str, seed: int = 0) -> str:
    """A tiny BertModel (embed task) with a word-level tokenizer, saved as safetensors."""
    import torch
    from transformers import BertModel

    os.makedirs(path, exist_ok=True)
    n = _word_level_tokenizer(path)
    torch.manual_seed(seed)
    BertModel(_bert_config(n)).eval().save_pretrained(path, safe_serialization=True)
    return path


def make_tiny_classifier(path: str, labels=("negative", "positive"), seed: int = 0) -> str:
    """A tiny BertForSequenceClassification with named labels."""
    import torch
    from transformers import BertForSequenceClassification

    os.makedirs(path, exist_ok=True)
    n = _word_level_tokenizer(path)
    cfg = _bert_config(
        n, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(cfg).eval().save_pretrained(path, safe_serialization=True)
    with open(os.path.join(path, "labels.json"), "w") as f:
        json.dump(list(labels), f)
    return path
