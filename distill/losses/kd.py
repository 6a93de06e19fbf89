"""Per-position KD terms between the teacher's cached top-k and the student's full softmax.

The teacher is known only through its top-k raw logprobs ℓ over a set S of token ids, so both
sides are compared on the same coarse partition of the vocabulary:

- tail="bucket": the k tokens of S plus one bucket for every other token (k+1 buckets). The
  teacher's tail holds r = 1 − Σ_S p, the student's 1 − Σ_S q. With k = V this is the exact KL.
- tail="renorm": S alone, both sides renormalised over S (the tail is dropped).

Every function here maps (n, buckets) or (n, V) tensors to (n,) per-position values; masking,
chunking and averaging live in `distill.losses.chunked`.

Numerical choices, and why:

- log(1 − Σ q) is taken as log1mexp(logsumexp(log q_S)), accurate at both ends. From the k
  gathered values alone its absolute error is about one fp32 ulp of log Z (~1e-6), which is
  worthless once the student puts almost nothing outside S; rows whose estimate falls below
  EXACT_TAIL_BELOW recompute it exactly as a logsumexp over the complement of S. Without that,
  an over-confident student sees its tail clamped and gets no gradient towards the teacher's
  tail mass, however large.
- Quantised teacher logprobs can sum to slightly more than 1: the tail is then empty (log r = −inf)
  and the k+1 buckets are renormalised, which also makes the tempered teacher a distribution. A tail
  within k rounding errors of 0 is empty too, or τ > 1 would inflate rounding noise into mass.
- Reverse KL takes log p where the teacher may have put exactly 0 (an empty tail): there the
  teacher is floored at TEACHER_FLOOR, so such a bucket costs the student at most
  q (log q + 18.4) instead of infinity.
"""

from __future__ import annotations

import math

import torch

KD_KINDS = ("forward", "reverse", "jsd", "sampled")
TAILS = ("bucket", "renorm")

TEACHER_FLOOR = 1e-8  # smallest teacher probability reverse KL believes (fp32 resolves 1 − Σp only to ~6e-8)
EXACT_TAIL_BELOW = 1e-4  # student tail mass below which the gathered estimate (±1e-6) is replaced by the exact one
STUDENT_LOG_FLOOR = -100.0  # log of an empty student tail (k = V): finite, so 0 · log 0 terms stay 0 and NaN-free


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) elementwise for x ≤ 0, accurate near 0 and for very negative x (Mächler, 2012).

    x: any shape; returns the same shape. x = 0 gives −inf.
    """
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def teacher_partition(topk_logprobs: torch.Tensor, tail: str, temperature: float) -> torch.Tensor:
    """Teacher log-probabilities over the buckets.

    topk_logprobs: (n, k) raw teacher logprobs (natural log, before temperature), any float dtype.
    Returns (n, k+1) for tail="bucket" (last column: the tail r = 1 − Σ_S p, −inf when the top-k
    sums to 1 within k rounding errors of the input dtype, or more) or (n, k) for tail="renorm",
    in fp32 (fp64 stays fp64).

    τ ≠ 1 re-tempers every bucket (ℓ_i/τ, and (log r)/τ for the tail) and renormalises over the
    buckets. That is an approximation: the tail's shape is unknown, so it is tempered as if it were
    a single token, which understates its tempered mass for τ > 1 (tempering lifts each of the many
    small tail tokens; Σ r_j^(1/τ) ≥ r^(1/τ)). With k = V it is exact.
    """
    lp = topk_logprobs if topk_logprobs.dtype == torch.float64 else topk_logprobs.float()
    if tail == "bucket":
        log_mass = torch.logsumexp(lp, dim=-1)  # (n,) log Σ_S p
        # a tail below k rounding errors of the input dtype is not resolvable from the k logprobs: it is
        # empty, not noise for τ > 1 to inflate; quantised logprobs can also sum a hair above 1
        resolution = topk_logprobs.shape[-1] * torch.finfo(topk_logprobs.dtype).eps
        log_tail = torch.where(log_mass > -resolution, -math.inf, log1mexp(log_mass.clamp(max=-resolution)))  # (n,)
        lp = torch.cat([lp, log_tail.unsqueeze(-1)], dim=-1)  # (n, k+1)
    # renormalising also absorbs an overshoot above 1; at τ = 1 with r > 0 it changes nothing
    return torch.log_softmax(lp / temperature, dim=-1)


def student_partition(
    logits: torch.Tensor, lse: torch.Tensor, topk_ids: torch.Tensor, tail: str, temperature: float
) -> torch.Tensor:
    """Student log-probabilities over the same buckets as `teacher_partition`.

    logits: (n, V) student logits before temperature, fp32 or fp64.
    lse: (n,) logsumexp(logits / τ).
    topk_ids: (n, k) long, the teacher's top-k ids (the set S).
    Returns (n, k+1) for tail="bucket" (last column: log(1 − Σ_S q)) or (n, k) for tail="renorm".
    """
    in_s = logits.gather(-1, topk_ids) / temperature - lse.unsqueeze(-1)  # (n, k): log q_i, i ∈ S
    if tail == "renorm":
        return torch.log_softmax(in_s, dim=-1)
    outside = _log_outside(logits, lse, topk_ids, in_s, temperature)  # (n,)
    return torch.cat([in_s, outside.unsqueeze(-1)], dim=-1)


def _log_outside(
    logits: torch.Tensor, lse: torch.Tensor, topk_ids: torch.Tensor, in_s: torch.Tensor, temperature: float
) -> torch.Tensor:
    """log(1 − Σ_S q) per row, (n,): from the k gathered log q_S (n, k), or exactly where that is too coarse.

    logits (n, V), lse (n,) and topk_ids (n, k) as in `student_partition`.
    """
    eps = torch.finfo(in_s.dtype).eps
    # clamp: rounding can put Σ_S q a hair above 1; the rows it affects take the exact path below
    cheap = log1mexp(torch.logsumexp(in_s, dim=-1).clamp(max=-eps))  # (n,)
    rows = (cheap < math.log(EXACT_TAIL_BELOW)).nonzero().squeeze(-1)
    if rows.numel() == 0:
        return cheap
    rest = logits.index_select(0, rows)  # (r, V) copy of the confident rows only
    if temperature != 1.0:
        rest.div_(temperature)
    # S is filled with the most negative finite value, not −inf: an empty complement (k = V) then
    # gives a finite logsumexp and a zero, not NaN, gradient
    rest.scatter_(-1, topk_ids.index_select(0, rows), torch.finfo(rest.dtype).min)
    exact = (torch.logsumexp(rest, dim=-1) - lse.index_select(0, rows)).clamp(min=STUDENT_LOG_FLOOR)  # (r,)
    return cheap.index_put((rows,), exact)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Σ_b a (log a − log b) per row: (n, B), (n, B) → (n,). Buckets where a = 0 contribute 0."""
    a = log_a.exp()
    # where() before the product: 0 · (−inf) would be NaN in the value and in the gradient
    diff = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * diff).sum(-1)


def divergence(log_p: torch.Tensor, log_q: torch.Tensor, kd: str, beta: float) -> torch.Tensor:
    """Per-position divergence between teacher and student partitions.

    log_p: (n, B) teacher log-probs (from `teacher_partition`); log_q: (n, B) student log-probs
    (from `student_partition`); B = k+1 or k. Returns (n,):
    forward KL(p‖q); reverse KL(q‖p) with p floored at TEACHER_FLOOR; jsd β·KL(p‖m) + (1−β)·KL(q‖m)
    with m = βp + (1−β)q, 0 < β < 1.
    """
    if kd == "forward":
        return _kl(log_p, log_q)
    if kd == "reverse":
        return _kl(log_q, log_p.clamp(min=math.log(TEACHER_FLOOR)))
    if kd == "jsd":
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))  # (n, B)
        return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    raise ValueError(f"divergence() handles forward, reverse and jsd, not {kd!r}")


def sampled_cross_entropy(
    logits: torch.Tensor, lse: torch.Tensor, sampled_ids: torch.Tensor, temperature: float
) -> torch.Tensor:
    """−(1/M) Σ_j log q(x_j) over M tokens x_j drawn from the teacher: (n,).

    An unbiased estimate of the cross-entropy from the full teacher distribution to the student,
    without the top-k truncation bias (Anshumann et al., 2025, "Sparse Logit Sampling").
    logits: (n, V) before temperature; lse: (n,) logsumexp(logits / τ); sampled_ids: (n, M) long.
    """
    log_q = logits.gather(-1, sampled_ids) / temperature - lse.unsqueeze(-1)  # (n, M)
    return -log_q.mean(-1)
