"""Records for cache tests: LM-like, with a trace token usually (not always) in the top-k."""

from __future__ import annotations

import numpy as np

from distill.cache import Record
from distill.cache.synthetic import lm_like_logprobs, zipf_topk_ids


def make_record(rng: np.random.Generator, i: int, k: int = 8, vocab: int = 1000, tokens: int | None = None) -> Record:
    t = int(rng.integers(1, 60)) if tokens is None else tokens
    ids = zipf_topk_ids(rng, t, k, vocab, 1.1) if k else np.zeros((t, 0), np.int32)
    lps = lm_like_logprobs(rng, t, k) if k else np.zeros((t, 0), np.float32)
    completion = rng.integers(0, vocab, t).astype(np.int32)
    sampled = rng.uniform(-12, 0, t).astype(np.float32)
    if k:
        inside = rng.random(t) < 0.8  # most trace tokens are among the teacher's top-k
        rank = rng.integers(0, k, t)
        completion[inside] = ids[inside, rank[inside]]
        sampled[inside] = lps[inside, rank[inside]]
    return Record(
        prompt_ids=rng.integers(0, vocab, int(rng.integers(1, 20))).astype(np.int32),
        completion_ids=completion,
        topk_ids=ids,
        topk_logprobs=lps,
        sampled_logprobs=sampled,
        meta={"prompt_id": f"q{i // 2}", "sample_index": i % 2, "finish_reason": "stop", "answer": str(i)},
    )
