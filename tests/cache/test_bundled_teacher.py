"""The bundled arith teacher's real distributions through a compact cache: trace logprobs exact, KD target exact.

A float32 transformers forward over its task's reference traces gives, at every completion position, the
top-20, the exact tail (a logsumexp over the complement) and the trace token's logprob. Most of its tokens
are near-certain (the arithmetic), where version 2's grid read every p ≥ 0.995 as 0.995; the cross-tokenizer
span term, ULD and the filter's best-of-n read that value raw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.cache import CacheSpec, CacheWriter, Record, open_cache

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "teachers" / "arith-teacher"
K = 20


@pytest.fixture(scope="module")
def forward() -> tuple[list[Record], int]:
    """One record per reference trace: the teacher's top-20, exact tail and trace logprob (float32 forward); and
    the teacher's vocabulary size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.presets import R1_INSTRUCTION
    from distill.prompts import render_prompt
    from distill.tasks import arith

    tok = AutoTokenizer.from_pretrained(TEACHER)
    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    records = []
    for i, q in enumerate(arith.problems("distill", 24)):
        prompt = tok(render_prompt(tok, q["prompt"], R1_INSTRUCTION, None, "<think>\n"), add_special_tokens=False)
        completion = tok(q["completion"].removeprefix("<think>\n"), add_special_tokens=False)["input_ids"]
        completion = completion + [tok.eos_token_id]
        full = torch.tensor([prompt["input_ids"] + completion])
        p = len(prompt["input_ids"])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(full).logits[0, p - 1 : -1].float(), -1)  # (T, V), as an engine's
        top = torch.topk(logprobs, K, dim=-1)
        targets = torch.tensor(completion)
        records.append(
            Record(
                prompt_ids=np.asarray(prompt["input_ids"], np.int32),
                completion_ids=np.asarray(completion, np.int32),
                topk_ids=top.indices.numpy().astype(np.int32),
                topk_logprobs=top.values.numpy(),
                sampled_logprobs=logprobs.gather(-1, targets[:, None])[:, 0].numpy(),
                tail_logprobs=torch.logsumexp(logprobs.double().scatter(-1, top.indices, -np.inf), -1).float().numpy(),
                meta={"prompt_id": str(i), "sample_index": 0},
            )
        )
    return records, int(model.config.vocab_size)


def test_trace_logprobs_decode_as_the_forward_gave_them(forward: tuple[list[Record], int], tmp_path: Path) -> None:
    records, vocab_size = forward
    sampled = np.concatenate([r.sampled_logprobs for r in records]).astype(np.float64)
    assert (sampled > np.log(0.995)).mean() > 0.5  # mostly near-certain: where version 2 read 0.995
    with CacheWriter(tmp_path / "c", CacheSpec(top_k=K, vocab_size=vocab_size), key="bundled") as w:
        for rec in records:
            w.append(rec)
        w.finish()
    decoded = list(open_cache(tmp_path / "c"))
    got = np.concatenate([r.sampled_logprobs for r in decoded]).astype(np.float64)
    assert np.abs(got - sampled).max() <= 1e-3
    # and the KD target a perfect student sees: KL(decoded ‖ exact) over the top-20 + tail, per position
    lp = np.concatenate([np.c_[r.topk_logprobs, r.tail_logprobs] for r in records]).astype(np.float64)
    dec = np.concatenate([np.c_[r.topk_logprobs, r.tail_logprobs] for r in decoded]).astype(np.float64)
    lp, dec = (x - np.logaddexp.reduce(x, axis=1, keepdims=True) for x in (lp, dec))
    kl = np.where(np.exp(dec) > 0, np.exp(dec) * (dec - lp), 0.0).sum(axis=1)
    assert kl.max() <= 1e-3 and kl.mean() <= 1e-4
