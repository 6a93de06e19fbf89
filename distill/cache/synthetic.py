"""LM-like synthetic teacher streams, for codec fidelity tests and `scripts/bench_cache.py`.

Built not to flatter the codec: top-k ids are drawn independently at every position from a Zipf
law over the whole vocabulary (exponent 1.0–1.2; real top-k sets repeat across neighbouring
positions and compress better), in random order within a position; logprobs decay as a power
law of rank with noise (sorted, highest first) and leave a random tail mass of 1–70%.
"""

from __future__ import annotations

import numpy as np


def zipf_topk_ids(rng: np.random.Generator, num_tokens: int, k: int, vocab_size: int, exponent: float) -> np.ndarray:
    """(num_tokens, k) int32 distinct ids per row, each drawn from Zipf(exponent) over the vocabulary."""
    ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-exponent)
    cdf /= cdf[-1]
    out = np.empty((num_tokens, k), np.int64)
    todo = np.arange(num_tokens)
    draws = 4 * k
    while len(todo):
        d = np.searchsorted(cdf, rng.random((len(todo), draws)))
        # sampling without replacement = the first k distinct ids in draw order
        order = np.argsort(d, axis=1, kind="stable")
        d_sorted = np.take_along_axis(d, order, axis=1)
        first = np.ones_like(d, dtype=bool)
        first[:, 1:] = d_sorted[:, 1:] != d_sorted[:, :-1]
        positions = np.where(first, order, draws)  # draw position of each first occurrence
        positions.sort(axis=1)
        enough = first.sum(axis=1) >= k
        keep = np.take_along_axis(d, np.minimum(positions[:, :k], draws - 1), axis=1)
        out[todo[enough]] = keep[enough]
        todo, draws = todo[~enough], draws * 2
    return np.minimum(out, vocab_size - 1).astype(np.int32)


def lm_like_logprobs(rng: np.random.Generator, num_tokens: int, k: int) -> np.ndarray:
    """(num_tokens, k) float32 logprobs, sorted highest first, top-k mass between 0.3 and 0.99."""
    slope = rng.uniform(0.6, 2.5, size=(num_tokens, 1))
    lp = -slope * np.log(np.arange(1, k + 1)) + rng.normal(0.0, 0.3, size=(num_tokens, k))
    lp = -np.sort(-lp, axis=1)
    mass = rng.uniform(0.3, 0.99, size=(num_tokens, 1))
    lp = lp - np.log(np.exp(lp).sum(axis=1, keepdims=True)) + np.log(mass)
    return lp.astype(np.float32)


def topk_kl(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """Per-position KL(p‖q) in nats between two top-k + tail-bucket distributions given as logprobs."""
    lp, lq = lp.astype(np.float64), lq.astype(np.float64)
    p, q = np.exp(lp), np.exp(lq)
    rp = np.clip(1.0 - p.sum(axis=1), 1e-12, None)
    rq = np.clip(1.0 - q.sum(axis=1), 1e-12, None)
    return (p * (lp - lq)).sum(axis=1) + rp * (np.log(rp) - np.log(rq))
