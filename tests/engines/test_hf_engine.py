"""distill.engines.hf_engine: after `load_weights`, the transformers engine scores with the new weights
(grpo's weight sync when it runs without vLLM)."""

from __future__ import annotations

from pathlib import Path

import torch

from distill.presets import resolve_preset

TEACHER = Path(resolve_preset("arith-teacher", "teacher").hub_id)


def test_hf_engine_load_weights() -> None:
    from transformers import AutoModelForCausalLM

    from distill.engines import Request
    from distill.engines.hf_engine import HFEngine

    engine = HFEngine(str(TEACHER))
    policy = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32)
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(1.1)
    req = Request(("p", 0), [5, 9, 14, 20], completion_ids=[31, 7, 40, 12])
    before = next(engine.score([req], 0)).sampled_logprobs
    engine.load_weights(policy.state_dict())
    after = next(engine.score([req], 0)).sampled_logprobs
    with torch.no_grad():
        lp = torch.log_softmax(policy(torch.tensor([[5, 9, 14, 20, 31, 7, 40, 12]])).logits[0, 3:7], -1)
    mine = lp.gather(-1, torch.tensor([[31], [7], [40], [12]]))[:, 0].numpy()
    assert abs(before - mine).max() > 1e-3
    assert abs(after - mine).max() < 1e-5
