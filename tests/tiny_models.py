"""Tiny random-initialised Hugging Face models built in a temp dir (fast, offline, real code paths)."""

from __future__ import annotations

import json
import os

WORDS = (
    "the a an and or of to in on for with is are was were be this that it as at by from spark delta "
    "model data table row rows text good bad great terrible happy sad price product customer churn "
    "fast slow quality service love hate ok fine movie film book music food phone battery screen"
).split()


def _word_level_tokenizer(path: str, pair: bool = False, model_max_length: int = 64) -> int:
    """A word-level BERT-style tokenizer over WORDS; `pair` adds text pairs ([CLS] A [SEP] B [SEP], B
    typed 1) and token type ids, as NLI models take them. Returns the vocab size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1" if pair else None,
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    extra = {"model_input_names": ["input_ids", "token_type_ids", "attention_mask"]} if pair else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=model_max_length, **extra,
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


def _gen_tokenizer(path: str, specials: dict[str, int], eos: str, append_eos: bool, **special_kw) -> int:
    """A word-level fast tokenizer over WORDS for the generation models; returns the vocab size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = dict(specials)
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    for ch in ".,:;!?-":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special_kw["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    if append_eos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, vocab[eos])]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, model_max_length=64, **special_kw)
    fast.save_pretrained(path)
    return len(vocab)


def make_tiny_t5(path: str, seed: int = 1) -> str:
    """A tiny T5ForConditionalGeneration (seq2seq `generate`): word-level tokenizer that appends </s>.

    A large init factor and this seed give varied greedy outputs, some of them ending in </s>.
    """
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    os.makedirs(path, exist_ok=True)
    n = _gen_tokenizer(path, {"<pad>": 0, "</s>": 1, "<unk>": 2}, eos="</s>", append_eos=True,
                       unk_token="<unk>", pad_token="<pad>")
    cfg = T5Config(
        vocab_size=n, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, tie_word_embeddings=False, initializer_factor=3.0,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model.save_pretrained(path, safe_serialization=True)
    return path


def make_tiny_gpt2(path: str, seed: int = 1) -> str:
    """A tiny GPT2LMHeadModel (decoder-only `generate`): eos token, no pad token (pad handling).

    Untied output embeddings and this seed give varied greedy outputs, some of them ending in eos.
    """
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    os.makedirs(path, exist_ok=True)
    n = _gen_tokenizer(path, {"<|endoftext|>": 0, "<unk>": 1}, eos="<|endoftext|>", append_eos=False,
                       unk_token="<unk>", bos_token="<|endoftext|>")
    cfg = GPT2Config(
        vocab_size=n, n_embd=32, n_layer=2, n_head=2, n_positions=128, n_inner=64, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0)
    model.save_pretrained(path, safe_serialization=True)
    return path
