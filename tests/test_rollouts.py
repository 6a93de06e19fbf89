"""The rollout pieces grpo and onpolicy share: rewards (unknown verdicts dropped, not scored 0), micro-batch
layout, and the engine-vs-trainer logprob comparison. The stages that use them are tested end to end in
tests/test_grpo.py and tests/test_onpolicy.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.engines import Completion
from distill.rollouts import Rollout, logprob_mismatch, micro_batches


def rollout_of(texts: list[str], prompts: list[dict]) -> Rollout:
    """A Rollout of `texts`, in groups of two, made without an engine: rewards read only texts and prompts."""
    completions = [
        Completion((str(i // 2), i % 2), [1, 2], np.zeros(3, np.int32), np.zeros((3, 1), np.int32),
                   np.zeros((3, 1), np.float32), np.zeros(3, np.float32), "stop")
        for i in range(len(texts))
    ]  # fmt: skip
    return Rollout(completions, texts, prompts)


def test_a_reward_that_cannot_be_computed_is_skipped_and_counted() -> None:
    from distill.losses import group_advantages
    from distill.rollouts import compute_rewards
    from distill.verify import UNKNOWN

    texts = ["<think>\n2 + 2 = 4</think> \\boxed{4}", "<think>\n2 + 2 = 5</think> \\boxed{5}"] * 2
    prompts = [{"prompt": "2 + 2?", "answer": "4"}] * 2 + [{"prompt": "no gold here", "answer": None}] * 2
    rewards, verdicts = compute_rewards(["math", "format"], [1.0, 0.5], rollout_of(texts, prompts))
    assert rewards[:2].tolist() == [1.5, 0.5]  # math 1 + format 0.5; math 0 + format 0.5
    assert torch.isnan(rewards[2:]).all()  # no gold answer: no reward, rather than a wrong 0
    assert [v.status for v in verdicts["math"][2:]] == [UNKNOWN, UNKNOWN]
    advantages = group_advantages(rewards, 2)
    assert advantages[0] > 0 > advantages[1] and advantages[2:].tolist() == [0.0, 0.0]


def test_a_sandbox_failure_drops_the_sample_instead_of_scoring_it_0(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code verifier's sandbox failure used to slip past a match on reason text and score 0."""
    import dataclasses

    from distill.rollouts import compute_rewards
    from distill.verify import code_check

    ref = {"io": [{"stdin": "1 2\n", "stdout": "3\n"}], "time_limit_s": 2}
    programs = ["print(sum(map(int, input().split())))", "print(0)"]  # right, wrong
    texts = [f"<think>\nadd them\n</think>\n```python\n{p}\n```" for p in programs]
    rollout = rollout_of(texts, [{"prompt": "Add two ints.", "answer": ref}] * 2)
    assert compute_rewards(["code"], [1.0], rollout)[0].tolist() == [1.0, 0.0]  # a working sandbox
    # No process may raise its open-files limit past fs.nr_open, root included: every sandbox set-up fails.
    limits = code_check._limits
    monkeypatch.setattr(code_check, "_limits", lambda r: dataclasses.replace(limits(r), open_files=1 << 40))
    rewards, verdicts = compute_rewards(["code"], [1.0], rollout)
    assert torch.isnan(rewards).all(), (rewards, verdicts)
    assert all("the sandbox failed" in v.reason for v in verdicts["code"])


def test_a_verifier_that_raises_gives_unknown_verdicts_for_its_items_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.rollouts import compute_rewards
    from distill.verify import FAILED, PASSED, UNKNOWN, VERIFIERS, Verdict

    def picky(completion: str, reference: object, **options: object) -> Verdict:
        if "boom" in completion:
            raise RuntimeError("cannot read this")
        return Verdict(PASSED if "good" in completion else FAILED, "checked")

    monkeypatch.setitem(VERIFIERS, "repetition", picky)
    rewards, verdicts = compute_rewards(
        ["repetition"], [1.0], rollout_of(["good", "boom", "bad", "good"], [{"prompt": "p"}] * 4)
    )
    assert [v.status for v in verdicts["repetition"]] == [PASSED, UNKNOWN, FAILED, PASSED]
    assert verdicts["repetition"][1].reason == "could not check: RuntimeError: cannot read this"
    assert rewards[[0, 2, 3]].tolist() == [1.0, 0.0, 1.0] and torch.isnan(rewards[1])


def completion(prompt: list[int], ids: list[int], logprobs: list[float]) -> Completion:
    n = len(ids)
    empty = np.zeros((n, 0), np.int32)
    return Completion(("p", 0), prompt, np.array(ids, np.int32), empty, empty.astype(np.float32),
                      np.array(logprobs, np.float32), "stop")  # fmt: skip


def test_micro_batches_left_pad_prompts_and_right_pad_completions() -> None:
    rows = [completion([5, 6, 7], [8, 9], [0, 0]), completion([5], [8, 9, 10], [0, 0, 0]), completion([1], [2], [0])]
    (first, second) = micro_batches(rows, [0, 1, 2], size=2, pad=0)
    assert first.rows == [0, 1] and second.rows == [2]
    assert first.input_ids.tolist() == [[5, 6, 7, 8, 9, 0], [0, 0, 5, 8, 9, 10]]
    assert first.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert first.position_ids.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]  # each row counts from its start
    assert first.completion_ids.tolist() == [[8, 9, 0], [8, 9, 10]]
    assert first.mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_logprob_mismatch_compares_only_completion_tokens() -> None:
    rows = [completion([1], [2, 3], [-0.5, -1.0]), completion([1], [2], [-2.0])]
    (mb,) = micro_batches(rows, [0, 1], size=2, pad=0)
    trainer = torch.tensor([[-0.5, -1.25], [-1.0, 99.0]])  # 99 sits on padding and must not count
    mean, worst = logprob_mismatch([mb], [trainer], [r.sampled_logprobs for r in rows])
    assert mean == pytest.approx((0 + 0.25 + 1.0) / 3) and worst == pytest.approx(1.0)


def test_the_rollout_learning_rate_warms_up_then_stays_or_follows_a_cosine_to_zero() -> None:
    from distill.rollouts import rollout_lr

    assert [rollout_lr(1.0, s, 3, "constant", 10) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = [rollout_lr(1.0, s, 2, "cosine", 12) for s in range(13)]
    assert cosine[:3] == [1 / 3, 2 / 3, 1.0] and cosine[7] == pytest.approx(0.5) and cosine[12] == 0.0
    assert all(a >= b for a, b in zip(cosine[2:], cosine[3:], strict=False))  # falls after the warm-up
    assert rollout_lr(1.0, 50, 2, "cosine", 12) == 0.0  # past the horizon: stays at 0
