"""Fingerprints change exactly when what they describe changes."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from distill.cache.key import GeneratedKey, OnPolicyKey, ScoredKey, cache_key, merged_key
from distill.fingerprint import prompt_set_fingerprint, tokenizer_fingerprint, weights_fingerprint


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


GENERATED = GeneratedKey(
    teacher="w1", prompts="p1", prompt_style={"instruction": "i"}, sampling={"temperature": 0.6}, top_k=20, seed=0,
    backend="vllm", dtype="auto", precision="compact", extra=None, slice=None,
)  # fmt: skip
CHANGED = {"teacher": "w2", "prompts": "p2", "prompt_style": {"instruction": "j"}, "sampling": {"temperature": 1.0},
           "top_k": 64, "seed": 1, "backend": "hf", "dtype": "float32", "precision": "fp32", "extra": [8, 1.0],
           "slice": [0, 2], "logprob_mode": "processed"}  # fmt: skip


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(GeneratedKey)])
def test_every_part_of_a_generated_cache_is_in_its_key(name: str) -> None:
    assert GENERATED.key() == dataclasses.replace(GENERATED).key()
    assert dataclasses.replace(GENERATED, **{name: CHANGED[name]}).key() != GENERATED.key()


def test_scored_and_onpolicy_keys_follow_the_teachers_weights() -> None:
    scored = ScoredKey(
        teacher="w1", traces="t", top_k=20, backend="vllm", dtype="auto", precision="compact", extra=None
    )
    assert dataclasses.replace(scored, teacher="w2").key() != scored.key()
    onpolicy = OnPolicyKey(teacher="w1", student="s1", settings={"lr": 1e-4})
    for change in ({"teacher": "w2"}, {"student": "s2"}, {"settings": {"lr": 2e-4}}):
        assert dataclasses.replace(onpolicy, **change).key() != onpolicy.key()
    # the three sources never share a key: each names what it is
    assert len({GENERATED.key(), scored.key(), onpolicy.key()}) == 3


def test_the_slices_of_one_run_merge_into_its_own_key() -> None:
    halves = [dataclasses.replace(GENERATED, slice=[i, 2]) for i in (1, 0)]
    key, parts = merged_key([h.key() for h in halves], [h.parts() for h in halves])
    assert key == GENERATED.key() and parts == GENERATED.parts()
    key, parts = merged_key([h.key() for h in halves[:1]] * 2, [halves[0].parts()] * 2)  # not a whole run
    assert parts is None and key not in (GENERATED.key(), halves[0].key())
