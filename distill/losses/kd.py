"""Per-position KD terms between the teacher's cached top-k and the student's full softmax.

The teacher is known only through its top-k raw logprobs ℓ over a set S of token ids, so both
sides are compared on the same coarse partition of the vocabulary:

- tail="bucket": the k tokens of S plus one bucket for every other token (k+1 buckets). The
  teacher's tail holds r = 1 − Σ_S p, the student's 1 − Σ_S q. With k = V this is the exact KL.
- tail="renorm": S alone, both sides renormalised over S (the tail is dropped). Not the
  DistillKit / axolotl form (the renormalised teacher against the student's full-vocabulary log q
  on S), on purpose: that form's optimum is the teacher truncated to S — a student sharper than its
  teacher, the top-k bias sampled KD exists to remove — and it is not 0 for the teacher itself
  (−log Σ_S p), so its kd would not compare with the other kinds'. The pressure on the student's
  mass outside S comes from tail="bucket" (exact at τ = 1) or, with renorm, from the CE term (α > 0).

Every function here maps (n, buckets) or (n, V) tensors to (n,) per-position values; masking,
chunking and averaging live in `distill.losses.chunked`.

Numerical choices, and why:

- log(1 − Σ q) is taken as log1mexp(logsumexp(log q_S)), accurate at both ends. From the k
  gathered values alone its absolute error is about one fp32 ulp of log Z (~1e-6), which is
  worthless once the student puts almost nothing outside S; rows whose estimate falls below
  EXACT_TAIL_BELOW recompute it exactly as a logsumexp over the complement of S. Without that,
  an over-confident student sees its tail clamped and gets no gradient towards the teacher's
  tail mass, however large.
- The teacher's tail is the cached log r when the cache has it (format 2: exact from the engine)
  and is otherwise derived from the top-k in float64 — never thresholded by the input dtype's
  epsilon, which in bf16 (k = 20) would empty tails of up to 14%. The k+1 buckets are normalised
  together, so a quantised top-1 that is off by half a percent is absorbed, not turned into tail.
- Temperature: tail="renorm" tempers exactly (ℓ_i/τ over S, renormalised: the tempered teacher
  given S). The tempered tail bucket Σ_{j∉S} p_j^(1/τ) / Z_τ cannot be known from the top-k (tempering
  one bucket as if it were one token is off by up to 0.9 in total variation), so tail="bucket" at
  τ ≠ 1 is refused rather than approximated.
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


def teacher_partition(
    topk_logprobs: torch.Tensor, tail: str, temperature: float, tail_logprobs: torch.Tensor | None = None
) -> torch.Tensor:
    """Teacher log-probabilities over the buckets.

    topk_logprobs: (n, k) raw teacher logprobs (natural log, before temperature), any float dtype.
    tail_logprobs: (n,) log of the teacher's mass outside the top-k (−inf: none), or None to derive it
        from the top-k in float64 (−inf where they sum to 1 or more).
    Returns (n, k+1) for tail="bucket" (last column: the tail) or (n, k) for tail="renorm", in fp32
    (fp64 stays fp64), normalised over the buckets. tail="renorm" applies temperature exactly
    (ℓ_i/τ, renormalised over S); tail="bucket" needs τ = 1 (see the module docstring).
    """
    lp = topk_logprobs if topk_logprobs.dtype == torch.float64 else topk_logprobs.float()
    if tail == "renorm":
        return torch.log_softmax(lp / temperature, dim=-1)
    if temperature != 1.0:
        raise ValueError("tail='bucket' is exact only at temperature 1; use tail='renorm' to temper the teacher")
    if tail_logprobs is None:
        log_mass = torch.logsumexp(topk_logprobs.double(), dim=-1)  # (n,) log Σ_S p, in fp64 whatever came in
        tail_logprobs = torch.where(log_mass < 0, log1mexp(log_mass.clamp(max=-1e-300)), -math.inf)
    log_tail = tail_logprobs.to(lp.dtype).clamp(max=0.0)  # (n,)
    # normalising the k+1 buckets together absorbs the quantiser's error on the top-1 (it can push Σ_S p past 1)
    return torch.log_softmax(torch.cat([lp, log_tail.unsqueeze(-1)], dim=-1), dim=-1)  # (n, k+1)


def student_partition(
    logits: torch.Tensor,
    lse: torch.Tensor,
    topk_ids: torch.Tensor,
    tail: str,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Student log-probabilities over the same buckets as `teacher_partition`.

    logits: (n, V) student logits before temperature, fp32 or fp64.
    lse: (n,) logsumexp(logits / τ).
    topk_ids: (n, k) long, the teacher's top-k ids (the set S).
    valid: (n, k) bool or None (all valid). False marks a column that stands for no token (a cross-tokenizer row
        with fewer teacher ids that map onto student ids than k): it gets q = 0 and leaves S, so the row is the
        partition of its valid columns; its id must repeat a valid id of the row (the exact tail then excludes
        nothing more). The teacher's side of such a column must be −inf (`teacher_partition` keeps it so).
    Returns (n, k+1) for tail="bucket" (last column: log(1 − Σ_S q)) or (n, k) for tail="renorm".
    """
    in_s = logits.gather(-1, topk_ids) / temperature - lse.unsqueeze(-1)  # (n, k): log q_i, i ∈ S
    if valid is not None:  # the most negative finite value, not −inf: exp gives 0, and no −inf − (−inf) NaN
        in_s = in_s.masked_fill(~valid, torch.finfo(in_s.dtype).min)
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


def divergence(
    log_p: torch.Tensor, log_q: torch.Tensor, kd: str, beta: float, teacher_floor: float | None = TEACHER_FLOOR
) -> torch.Tensor:
    """Per-position divergence between teacher and student partitions.

    log_p: (n, B) teacher log-probs (from `teacher_partition`); log_q: (n, B) student log-probs
    (from `student_partition`); B = k+1 or k (or V: `distill.losses.full_vocab`). Returns (n,):
    forward KL(p‖q); reverse KL(q‖p) with p floored at `teacher_floor` (None: not floored, for a teacher whose
    every probability is exact); jsd β·KL(p‖m) + (1−β)·KL(q‖m) with m = βp + (1−β)q, 0 < β < 1.
    Every kind is exactly 0 where log_p == log_q.
    """
    if kd == "forward":
        return _kl(log_p, log_q)
    if kd == "reverse":
        return _kl(log_q, log_p if teacher_floor is None else log_p.clamp(min=math.log(teacher_floor)))
    if kd == "jsd":
        log_m = _log_mixture(log_p, log_q, beta)  # (n, B)
        return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    raise ValueError(f"divergence() handles forward, reverse and jsd, not {kd!r}")


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """log(β·p + (1 − β)·q) elementwise, written around the larger side so that p == q gives log p exactly
    (logaddexp(ℓ + log β, ℓ + log(1 − β)) is off by rounding, which made jsd of equal sides ~1e-8, not 0)."""
    p_larger = log_p >= log_q
    big, small = torch.where(p_larger, log_p, log_q), torch.where(p_larger, log_q, log_p)
    w_small = beta + (1.0 - 2.0 * beta) * p_larger.to(big.dtype)  # the smaller side's weight, in big's dtype
    gap = torch.where(torch.isinf(big) & (big < 0), 0.0, small - big)  # both −inf: no mass, no NaN
    return big + torch.log1p(w_small * torch.expm1(gap))


def sampled_kl(
    logits: torch.Tensor,
    lse: torch.Tensor,
    extra_ids: torch.Tensor,
    extra_logprobs: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """(1/M) Σ_j (log p_τ(x_j) − log q_τ(x_j)) over M tokens x_j drawn from the tempered teacher p_τ: (n,).

    An unbiased estimate of the full-vocabulary KL(p_τ‖q_τ), without the top-k truncation bias
    (Anshumann et al., 2025, "Sparse Logit Sampling"); its gradient is the unbiased −(1/M) Σ ∇log q_τ(x_j).
    A student equal to the teacher gets exactly 0 for every draw.
    logits: (n, V) before temperature; lse: (n,) logsumexp(logits / τ); extra_ids: (n, M) long;
    extra_logprobs: (n, M) the teacher's log p_τ(x_j), at the temperature the tokens were drawn at (= τ).
    """
    log_q = logits.gather(-1, extra_ids) / temperature - lse.unsqueeze(-1)  # (n, M)
    return (extra_logprobs.to(log_q.dtype) - log_q).mean(-1)
