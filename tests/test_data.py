"""Packed training batches: planning, alignment of targets and teacher top-k, isolation of records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.cache import Record
from distill.data import PackedLoader, collate, plan_rows
from distill.losses import IGNORE_INDEX


def record(i: int, p: int, t: int, k: int = 3) -> Record:
    rng = np.random.default_rng(i)
    return Record(
        prompt_ids=rng.integers(5, 400, p).astype(np.int32),
        completion_ids=rng.integers(5, 400, t).astype(np.int32),
        topk_ids=rng.integers(0, 400, (t, k)).astype(np.int32),
        topk_logprobs=-np.sort(rng.random((t, k)).astype(np.float32), axis=1),
        sampled_logprobs=np.zeros(t, np.float32),
        meta={"prompt_id": str(i), "sample_index": 0},
    )


def test_plan_is_deterministic_complete_and_fits() -> None:
    lengths = [5, 17, 3, 30, 8, 12, 9, 1]
    a, b = plan_rows(lengths, 32, seed=1, epoch=0), plan_rows(lengths, 32, seed=1, epoch=0)
    assert a == b and a != plan_rows(lengths, 32, seed=1, epoch=1)
    assert sorted(i for row in a for i in row) == list(range(len(lengths)))
    assert all(sum(min(lengths[i], 32) for i in row) <= 32 for row in a)


def test_collate_aligns_targets_and_teacher_with_the_predicting_position() -> None:
    r1, r2 = record(1, 4, 3), record(2, 2, 5)
    batch = collate([[r1, r2]], max_length=64, pad_id=0, top_k=3, extra_k=0)
    assert batch.input_ids.shape == (1, 14)
    np.testing.assert_array_equal(batch.position_ids[0].numpy(), [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6])
    # r1: prompt 4 → its completion tokens are predicted at positions 3, 4, 5
    np.testing.assert_array_equal(batch.targets[0, 3:6].numpy(), r1.completion_ids)
    np.testing.assert_array_equal(batch.topk_ids[0, 3:6].numpy(), r1.topk_ids)
    # r2 starts at 7 with prompt 2 → positions 8..12
    np.testing.assert_array_equal(batch.targets[0, 8:13].numpy(), r2.completion_ids)
    np.testing.assert_allclose(batch.topk_logprobs[0, 8:13].numpy(), r2.topk_logprobs)
    assert batch.num_tokens == 8
    mask = (batch.targets[0] != IGNORE_INDEX).numpy()
    assert not mask[[0, 1, 2, 6, 7, 13]].any()  # prompts, the last token of each record


def test_truncation_and_padding() -> None:
    long, short = record(3, 4, 40), record(4, 2, 2)
    batch = collate([[long], [short]], max_length=16, pad_id=9, top_k=3, extra_k=0)
    assert batch.input_ids.shape == (2, 16)
    # the long record keeps 16 tokens: 4 prompt + 12 completion tokens, each predicted by the position before
    assert batch.num_tokens == 12 + 2
    assert (batch.input_ids[1, 4:] == 9).all() and (batch.targets[1, 4:] == IGNORE_INDEX).all()


def test_loader_gives_every_world_size_the_same_global_step() -> None:
    records = [record(i, 3, 2 + i % 5) for i in range(24)]
    lengths = np.array([[3, 2 + i % 5] for i in range(24)])
    one = PackedLoader(records, range(24), lengths, 16, rows_per_step=4, micro_rows=2, seed=0, pad_id=0, top_k=3)
    two = [PackedLoader(records, range(24), lengths, 16, 4, 1, 0, 0, 3, rank=r, world_size=2) for r in range(2)]
    for step in range(3):
        b1, n1 = one.step(step)
        parts = [loader.step(step) for loader in two]
        assert all(n == n1 for _, n in parts)
        assert sum(b.num_tokens for b in b1) == n1 == sum(b.num_tokens for bs, _ in parts for b in bs)
    assert one.step_rows(one.steps_per_epoch) != one.step_rows(0)


def test_packed_records_do_not_attend_to_each_other(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    r1, r2 = record(5, 6, 5), record(6, 3, 7)
    batch = collate([[r1, r2]], max_length=64, pad_id=0, top_k=3, extra_k=0)
    with torch.no_grad():
        packed = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits[0]
        alone = model(
            input_ids=torch.from_numpy(np.concatenate([r2.prompt_ids, r2.completion_ids]))[None].long()
        ).logits[0]
    np.testing.assert_allclose(packed[11:21].numpy(), alone.numpy(), atol=1e-5)
