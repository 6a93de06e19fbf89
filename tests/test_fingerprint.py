"""Fingerprints change exactly when what they describe changes."""

from __future__ import annotations

import shutil
from pathlib import Path

from distill.fingerprint import cache_key, prompt_set_fingerprint, tokenizer_fingerprint, weights_fingerprint


def test_tokenizer_fingerprint_sees_vocab_specials_and_template(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    base = tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_model)) == base
    tok.chat_template = tok.chat_template + "{# changed #}"
    assert tokenizer_fingerprint(tok) != base
    tok2 = AutoTokenizer.from_pretrained(tiny_model)
    tok2.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    assert tokenizer_fingerprint(tok2) != base


def test_weights_fingerprint_follows_file_contents(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert weights_fingerprint(copy) == weights_fingerprint(tiny_model)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert weights_fingerprint(copy) != weights_fingerprint(tiny_model)
    assert weights_fingerprint("org/model", "abc") != weights_fingerprint("org/model", "def")


def test_prompt_set_and_cache_key() -> None:
    a = [{"id": "1", "prompt": "2+2?", "answer": "4"}]
    b = [{"id": "1", "prompt": "2+2?", "answer": "5"}]
    assert prompt_set_fingerprint(a) != prompt_set_fingerprint(b)
    assert cache_key(t="x", k=20, seed=0) == cache_key(seed=0, k=20, t="x")
    assert cache_key(t="x", k=20, seed=0) != cache_key(t="x", k=20, seed=1)
