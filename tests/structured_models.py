"""Tiny random generators with byte-level BPE tokenizers: every string (JSON, digits, quotes) is
spellable, so constrained decoding has tokens to choose from while unconstrained output is garbage."""

from __future__ import annotations

import os

#: a small training corpus for the BPE merges: JSON-ish text, digits, words of the tests
CORPUS = [
    '{"category": "billing", "urgency": 3, "tags": ["refund", "late"], "refund_requested": true}',
    '{"name": "spark", "price": 12.5, "items": [1, 2, 3], "ok": false, "note": null}',
    "the customer asked for a refund because the delivery was late and the product arrived broken",
    "my phone battery drains fast, the screen is cracked and the service was slow",
    "great quality, fast shipping, love the product; price was fine",
    "0123456789 -+.eE abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ _:,;!?()[]{}\"'",
]


def _bytelevel_tokenizer(path: str, *, append_eos: bool, vocab_size: int = 400) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    if append_eos:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=256)
    fast.save_pretrained(path)
    return tok.get_vocab_size()


def make_bytelevel_gpt2(path: str, seed: int = 4, hidden: int = 32, layers: int = 2) -> str:
    """A tiny GPT2LMHeadModel over a byte-level BPE vocabulary (pad 0, eos 1); `hidden`/`layers` make
    a heavier one for benches."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    os.makedirs(path, exist_ok=True)
    n = _bytelevel_tokenizer(path, append_eos=False)
    cfg = GPT2Config(vocab_size=n, n_embd=hidden, n_layer=layers, n_head=2, n_positions=512, n_inner=2 * hidden,
                     resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1, pad_token_id=0,
                     tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=1, pad_token_id=0)
    model.save_pretrained(path, safe_serialization=True)
    return path


def make_bytelevel_t5(path: str, seed: int = 6) -> str:
    """A tiny T5ForConditionalGeneration over a byte-level BPE vocabulary that appends </s>."""
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    os.makedirs(path, exist_ok=True)
    n = _bytelevel_tokenizer(path, append_eos=True)
    cfg = T5Config(vocab_size=n, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
                   relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model.save_pretrained(path, safe_serialization=True)
    return path
