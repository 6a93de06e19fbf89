"""A tokenizer of Llama 2's layout, built offline, and a tiny Llama-shaped model that uses it: the byte-fallback case
of cross-tokenizer distillation, shared by tests/losses/test_cross_tokenizer.py, tests/test_retokenize.py and
tests/test_train_cross_tokenizer.py.

Llama 2, Mistral and Gemma tokenize with SentencePiece BPE: "▁" stands for a space and is prepended to the text, and
a character outside the vocabulary is written as its UTF-8 bytes, one `<0xNN>` token per byte (Llama 2's ids 3..258,
below every piece). transformers 5 builds `LlamaTokenizer` from a vocabulary and merges with exactly that pipeline
(BPE with byte_fallback, Metaspace pre-tokenizer, decoder Replace("▁", " ") + ByteFallback + Fuse + Strip), and
rebuilds it the same way when it loads a saved one. The vocabulary is trained here on the arithmetic corpus and a
pangram, so ASCII letters are pieces (`k` is one, and its byte token `<0x6B>` has the lower id), "中" and "é" are
pieces, and emoji and the other CJK characters fall back to bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# emoji twice and CJK outside the vocabulary (adjacent byte-fallback runs), "k" (a piece its byte token shadows)
TEXT = "Compute 12×3 = 36. 😀😀 中文字 so we think: café"


def byte_fallback_tokenizer() -> Any:
    """A `LlamaTokenizer` of Llama 2's layout: <unk> <s> </s>, the 256 byte tokens, then ~300 trained pieces; the
    Qwen-style special tokens and chat template of distill.models.tiny, so the pipeline's commands take it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    from distill.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, default_corpus

    corpus = default_corpus(seed=3) + ["the quick brown fox jumps over the lazy dog; I think 中 café"] * 20
    sp = Tokenizer(models.BPE(unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    sp.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    )
    trained = json.loads(sp.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    tok = LlamaTokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in trained["merges"]],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:]})
    return tok


def build_byte_fallback_model(out_dir: str | Path, seed: int = 0) -> Path:
    """A randomly initialised tiny `LlamaForCausalLM` (hidden 128, 4 heads of 32) with `byte_fallback_tokenizer`."""
    from distill.models.tiny import build_tiny_model

    return build_tiny_model(out_dir, tokenizer=byte_fallback_tokenizer(), family="llama", seed=seed)
