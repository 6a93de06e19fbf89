"""LM-like and adversarial synthetic teacher streams, for codec fidelity tests and `scripts/bench_cache.py`.

Built not to flatter the codec: top-k ids are drawn independently at every position from a Zipf
law over the whole vocabulary (exponent 1.0–1.2; real top-k sets repeat across neighbouring
positions and compress better), in random order within a position; logprobs decay as a power
law of rank with noise (sorted, highest first) and leave a random tail mass of 1–70%.

The adversarial teachers put each value a hundredth of a cell beside a rounding boundary of the codec's
grid (found by bisection on `codec.quantize_logprobs`, whatever the grid), rounding up and down in turn,
so that the errors add instead of cancelling: the worst a position can do to a perfect student.
"""

from __future__ import annotations

import numpy as np

from distill.cache import codec


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


# ---------------------------------------------------------------------------------------------
# adversarial teachers: (T, k) float64 logprobs sorted highest first, (T,) float64 exact log tails


def _boundary(level: np.ndarray) -> np.ndarray:
    """The logprob where the codec's grid stops rounding to `level` and starts rounding to `level + 1`."""
    a = codec.dequantize_logprobs(level).astype(np.float64)
    b = codec.dequantize_logprobs(level + 1).astype(np.float64)
    for _ in range(60):  # bisection: whatever the grid's companding
        mid = (a + b) / 2
        below = codec.quantize_logprobs(mid) <= level
        a, b = np.where(below, mid, a), np.where(below, b, mid)
    return b


def beside_boundary(target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Logprobs near `target` (float64, strictly inside the grid) a hundredth of a cell beside the rounding boundary
    nearest to it: just above it where `up` (rounds up: decoded > true), just below it elsewhere (decoded < true)."""
    level = codec.quantize_logprobs(target)
    lower, upper = _boundary(level - 1), _boundary(level)
    nearest = np.where(target - lower < upper - target, lower, upper)
    cell = upper - lower
    return nearest + np.where(up, 1, -1) * 0.01 * cell


def _place_split(rng: np.random.Generator, log_small: np.ndarray) -> np.ndarray:
    """The log of the smaller side of the top-k / tail split (≤ log ½) moved beside a boundary where it stays ≤ ½."""
    placed = beside_boundary(log_small, rng.random(log_small.shape) < 0.5)
    return np.where(placed < np.log(0.5), placed, log_small)


def _adversarial_topk(rng: np.random.Generator, others: np.ndarray) -> np.ndarray:
    """(T, k) relative logprobs summing to 1: k − 1 values near `others` (T, k−1) beside boundaries, rounding up
    and down in turn down each sorted row (near-equal weights: the errors' mean cancels, their variance adds),
    and the rest of the mass on one free value."""
    others = -np.sort(-others, axis=1)
    up = (np.arange(others.shape[1]) % 2 == 0)[None, :] ^ (rng.random((len(others), 1)) < 0.5)
    placed = beside_boundary(others, np.broadcast_to(up, others.shape))
    free = np.log1p(-np.exp(placed).sum(axis=1, keepdims=True))
    assert np.isfinite(free).all(), "the placed values must leave some mass for the free one"
    return -np.sort(-np.concatenate([free, placed], axis=1), axis=1)


def near_equal_logprobs(rng: np.random.Generator, tokens: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One free top-1 and k − 1 near-equal small probabilities beside boundaries, swept across the whole grid from
    e^-9 up to 1/k (the knee included); the tail 1e-4 to ½, also beside a boundary. k ≥ 2."""
    level = rng.uniform(-9.0, np.log(0.7 / (k - 1)), (tokens, 1))  # where the k − 1 sit
    rel = _adversarial_topk(rng, level + rng.uniform(-0.3, 0.3, (tokens, k - 1)))
    log_tail = _place_split(rng, rng.uniform(np.log(1e-4), np.log(0.5), tokens))
    return rel + np.log(-np.expm1(log_tail))[:, None], log_tail


def half_mass_logprobs(rng: np.random.Generator, tokens: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k mass within 2% of ½ (where the split code changes sides), below it at half the positions and above
    it at the rest; the top-k near-equal, beside boundaries (k − 1 share 90% of it, the free one the rest). k ≥ 2."""
    rel = _adversarial_topk(rng, np.log(0.9 * rng.dirichlet(np.full(k - 1, 20.0), tokens)))
    log_small = _place_split(rng, np.log(0.5) - rng.uniform(0.0, 0.02, tokens))
    below = rng.random(tokens) < 0.5  # top-k mass < ½: the smaller side is the top-k
    log_mass = np.where(below, log_small, np.log(-np.expm1(log_small)))
    log_tail = np.where(below, np.log(-np.expm1(log_small)), log_small)
    return rel + log_mass[:, None], log_tail


def flat_logprobs(rng: np.random.Generator, tokens: int, k: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A teacher nearly uniform over the vocabulary (a random-weight model): p_i = (Γ_{k+1} / Γ_i)^σ / V, the top-k
    of V Gumbel logits scaled by σ (Γ_i: sums of i standard exponentials, the order statistics' spacings),
    relative to the (k+1)-th; σ = 0 (exactly uniform) at a quarter of the positions, else uniform in [0, ½].
    At V = 151,936 the top-20 hold 1.3e-4 to a few 1e-3 of the mass."""
    gamma = np.cumsum(rng.exponential(size=(tokens, k + 1)), axis=1)
    sigma = np.where(rng.random((tokens, 1)) < 0.25, 0.0, rng.uniform(0.0, 0.5, (tokens, 1)))
    lp = sigma * np.log(gamma[:, k:] / gamma[:, :k]) - np.log(vocab_size)
    return lp, np.log1p(-np.exp(lp).sum(axis=1))
