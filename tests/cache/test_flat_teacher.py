"""A flat teacher over a large vocabulary (a random-weight model, a GPU smoke test) through cache and losses.

Its top-k holds k/V of the mass: 1.3e-4 at k = 20, V = 151,936. Before format 3's reader, a top-k mass
below 2.6e-4 decoded as probability 0 and the tail as 1: the trace logprob −inf, `--tail renorm` NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cache import CacheSpec, CacheWriter, Record, open_cache
from distill.losses.chunked import distill_loss

VOCAB = 151_936


def flat_record(k: int, tokens: int = 3) -> Record:
    """`tokens` positions of a teacher uniform over VOCAB: its top-k ids 0..k-1, the trace token at rank 1."""
    ids = np.tile(np.arange(k, dtype=np.int32), (tokens, 1))
    lp = np.full((tokens, k), -np.log(VOCAB), np.float32)
    return Record(
        prompt_ids=np.array([5, 6], np.int32),
        completion_ids=ids[:, 1].copy(),
        topk_ids=ids,
        topk_logprobs=lp,
        sampled_logprobs=lp[:, 1].copy(),
        meta={"prompt_id": "flat", "sample_index": 0},
    )


@pytest.mark.parametrize("k", [20, 64])
def test_a_flat_teacher_decodes_as_written(tmp_path: Path, k: int) -> None:
    with CacheWriter(tmp_path / "c", CacheSpec(top_k=k, vocab_size=VOCAB), key="flat") as writer:
        writer.append(flat_record(k))
        writer.finish()
    rec = open_cache(tmp_path / "c")[0]
    # the top-k's mass (k/V) is on the grid's 0.25-nat part: each top-k value within half a step, all alike
    np.testing.assert_allclose(rec.topk_logprobs, -np.log(VOCAB), atol=0.13, rtol=0)
    np.testing.assert_allclose(rec.tail_logprobs, np.log1p(-k / VOCAB), atol=1e-4, rtol=0)
    np.testing.assert_allclose(rec.sampled_logprobs, -np.log(VOCAB), atol=1e-3, rtol=0)


@pytest.mark.parametrize("tail", ["bucket", "renorm"])
@pytest.mark.parametrize("kd", ["forward", "reverse", "jsd"])
def test_a_flat_teacher_is_its_own_perfect_student(tmp_path: Path, kd: str, tail: str) -> None:
    """A uniform student (zero logits over VOCAB) against the decoded flat teacher: KD ≈ 0, never NaN or inf."""
    with CacheWriter(tmp_path / "c", CacheSpec(top_k=20, vocab_size=VOCAB), key="flat") as writer:
        writer.append(flat_record(20))
        writer.finish()
    rec = open_cache(tmp_path / "c")[0]
    out = distill_loss(
        torch.zeros(rec.num_tokens, 4),
        torch.zeros(VOCAB, 4),
        torch.as_tensor(rec.completion_ids, dtype=torch.long),
        torch.as_tensor(rec.topk_ids, dtype=torch.long),
        torch.as_tensor(rec.topk_logprobs),
        torch.as_tensor(rec.tail_logprobs) if tail == "bucket" else None,
        alpha=0.0,
        kd=kd,
        tail=tail,
    )
    assert torch.isfinite(out.loss) and 0 <= float(out.kd) <= 1e-3
