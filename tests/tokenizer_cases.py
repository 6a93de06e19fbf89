"""Tokenizers the cross-tokenizer tests use, built offline or loaded from the bundled presets, and a tiny Llama-shaped
model with a tokenizer of Llama 2's layout (tests/test_alignment.py, tests/losses/test_cross_tokenizer.py,
tests/test_retokenize.py, tests/test_train_cross_tokenizer.py, tests/test_onpolicy.py).

- `bundled_tokenizer`: a preset's own (the bundled teacher's byte-level BPE with Qwen's pre-tokenizer, that spells
  every digit alone; arith-student-bpe's, that writes numbers whole);
- `byte_level_tokenizer`: another byte-level BPE (GPT-2's regex), 300 tokens;
- `metaspace_tokenizer`: a SentencePiece-style BPE ("▁" marks a space, the first one dropped when decoding) with an
  <unk> and no byte fallback, so a character outside its vocabulary is no text it can spell;
- `byte_fallback_tokenizer`: Llama 2's layout, below.

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

# a reasoning trace with special tokens, a multiplication sign, accents, an emoji and CJK (the bundled tokenizers)
TRACE_TEXT = "<think>\nCompute 12×3 = 36. café 😀 中文, so we add 17 + 25 = 42.</think>\n\\boxed{42}<|im_end|>"
# emoji twice and CJK outside the vocabulary (adjacent byte-fallback runs), "k" (a piece its byte token shadows)
BYTE_FALLBACK_TEXT = "Compute 12×3 = 36. 😀😀 中文字 so we think: café"


def bundled_tokenizer(preset: str) -> Any:
    """The tokenizer of a bundled preset (arith-teacher, arith-student-bpe, ...)."""
    from transformers import AutoTokenizer

    from distill.presets import resolve_preset

    return AutoTokenizer.from_pretrained(resolve_preset(preset, "teacher").hub_id)


def byte_level_tokenizer() -> Any:
    """A byte-level BPE of 300 tokens (GPT-2's regex, ByteLevel) with Qwen-style special tokens."""
    from distill.models.tiny import build_tokenizer, default_corpus

    return build_tokenizer(default_corpus(seed=1), vocab_size=300)


def metaspace_tokenizer() -> Any:
    """A SentencePiece-style BPE of 200 tokens: Metaspace pre-tokenizer and decoder, <unk>, no byte fallback; its
    eos (<|im_end|>) added after training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from distill.models.tiny import default_corpus

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False)
    tok.train_from_iterator(default_corpus(seed=2), trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    out.add_special_tokens({"eos_token": "<|im_end|>"})
    return out


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
