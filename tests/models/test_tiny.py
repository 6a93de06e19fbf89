"""The offline tiny-model builder: loads in transformers and in real vLLM (CPU), tokenizer round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.models.tiny import build_tiny_model


def test_tokenizer_round_trips_text_with_spaces_and_specials(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "<think>\nFirst  add 12 + 7 = 19.\n</think>\nSo the answer is \\boxed{19}.<|im_end|>"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.convert_tokens_to_ids("</think>") != tok.unk_token_id
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>assistant\n")


def test_model_loads_with_head_size_vllm_accepts(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    cfg = model.config
    assert cfg.model_type == "qwen2" and cfg.hidden_size // cfg.num_attention_heads >= 32
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, cfg.vocab_size)


def test_builder_is_reproducible_by_seed(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(build_tiny_model(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", seed=4) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_small_head_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head size 16"):
        build_tiny_model(tmp_path / "x", hidden_size=64, num_heads=4)


@pytest.mark.vllm
def test_real_vllm_generates_with_top_k_logprobs(tiny_model: Path) -> None:
    import vllm

    # enforce_eager: with TORCHDYNAMO_DISABLE (set for speed on CPU) vLLM cannot compile its graphs
    llm = vllm.LLM(
        model=str(tiny_model), dtype="float32", max_model_len=256, seed=0, max_logprobs=20, enforce_eager=True
    )
    params = vllm.SamplingParams(max_tokens=16, temperature=1.0, logprobs=5, seed=1, ignore_eos=True)
    out = llm.generate(["12 + 7 ="], params, use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 16 and len(out.logprobs) == 16
    assert all(len(pos) in (5, 6) for pos in out.logprobs)  # k, or k+1 when the sampled token is outside
