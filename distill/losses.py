"""Distillation losses over the student's output layer, computed in chunks of tokens.

total = α·CE + (1 − α)·τ²·KD, averaged over unmasked (completion) positions, where the teacher is
known only through its cached top-k raw logprobs ℓ_i (i ∈ S, p_i = exp ℓ_i, tail mass r = 1 − Σ_S p_i)
and the student through logits z over the full vocabulary, log q = log_softmax(z / τ).

KD variants, all on the partition "S plus one tail bucket" (tail="bucket") or on S renormalised
(tail="renorm", both sides renormalised over S):
- forward:  KL(p‖q) = Σ p (log p − log q)        (the default; the student covers the teacher's modes)
- reverse:  KL(q‖p)                               (mode seeking)
- jsd:      β·KL(p‖m) + (1−β)·KL(q‖m), m = βp + (1−β)q
- sampled:  −(1/M) Σ_j log q(x_j) with x_j drawn from the teacher: an unbiased estimate of the
            cross-entropy to the full teacher distribution (Anshumann et al., 2025), no top-k bias.

Temperature τ ≠ 1 softens both sides: the student as above; the teacher by re-tempering its raw
logprobs (ℓ_i/τ, and (log r)/τ for the tail bucket) and renormalising over the k+1 buckets. That
is an approximation — the tail's shape is unknown, so it is tempered as if it were one token.
CE is always at τ = 1.

Memory: batch × time × vocab logits are never materialised. Per chunk of `chunk_size` tokens the
logits are computed, reduced to per-token loss terms, and dropped; backward recomputes them
(activation checkpointing per chunk). Peak loss memory scales with chunk_size × V, not with N × V.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
KD_KINDS = ("forward", "reverse", "jsd", "sampled")
TAILS = ("bucket", "renorm")


@dataclass
class LossOutput:
    """The loss to backpropagate and its parts (means over `num_tokens` unmasked positions)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    num_tokens: int


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16/fp16 activations are upcast; fp64 stays fp64 for reference tests)."""
    return t if t.dtype == torch.float64 else t.float()


# ---------------------------------------------------------------------------------------------
# partitions and divergences on (n, buckets) log-probabilities


def teacher_partition(topk_logprobs: torch.Tensor, tail: str, temperature: float) -> torch.Tensor:
    """Teacher log-probs over the buckets: (n, k+1) for 'bucket' (last = tail), (n, k) for 'renorm'."""
    lp = _upcast(topk_logprobs)
    if tail == "bucket":
        rest = (1.0 - lp.exp().sum(-1)).clamp(min=0.0)  # quantised logprobs may sum a hair above 1
        parts = torch.cat([lp, rest.log().unsqueeze(-1)], dim=-1)
    else:
        parts = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
    if temperature != 1.0:
        parts = torch.log_softmax(parts / temperature, dim=-1)
    return parts


def student_partition(scaled: torch.Tensor, lse: torch.Tensor, topk_ids: torch.Tensor, tail: str) -> torch.Tensor:
    """Student log-probs over the same buckets, from tempered logits `scaled` (n, V) and their logsumexp (n,)."""
    in_s = scaled.gather(-1, topk_ids) - lse.unsqueeze(-1)  # (n, k)
    if tail == "renorm":
        return in_s - torch.logsumexp(in_s, dim=-1, keepdim=True)
    # log of the mass outside S, log(1 − Σ_S q), from the k gathered values only (no second (n, V) pass);
    # clamped just below 0 because rounding can put Σ_S q a hair above 1
    inside = torch.logsumexp(in_s, dim=-1).clamp(max=-torch.finfo(in_s.dtype).eps)  # (n,)
    outside = torch.where(inside > -math.log(2), torch.log(-torch.expm1(inside)), torch.log1p(-torch.exp(inside)))
    return torch.cat([in_s, outside.unsqueeze(-1)], dim=-1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Σ a (log a − log b) per row; buckets with a = 0 contribute 0 (whatever b is)."""
    a = log_a.exp()
    diff = torch.where(a > 0, log_a - log_b.clamp(min=-1e4), torch.zeros_like(log_a))
    return (a * diff).sum(-1)


def divergence(log_p: torch.Tensor, log_q: torch.Tensor, kd: str, beta: float) -> torch.Tensor:
    """Per-row divergence between teacher (log_p) and student (log_q) partitions, (n, buckets) → (n,)."""
    if kd == "forward":
        return _kl(log_p, log_q)
    if kd == "reverse":
        return _kl(log_q, log_p)
    # generalised JSD; β = 0 or 1 makes it vanish, as the definition does
    if beta <= 0.0 or beta >= 1.0:
        return torch.zeros(log_p.shape[0], dtype=log_p.dtype, device=log_p.device)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


# ---------------------------------------------------------------------------------------------
# one chunk: logits → per-token terms → sums


def _chunk_sums(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None,
    topk_logprobs: torch.Tensor | None,
    sampled_ids: torch.Tensor | None,
    alpha: float,
    kd: str,
    tail: str,
    temperature: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of CE, sum of KD) over the unmasked positions of one chunk. hidden (n, H), weight (V, H)."""
    up = _upcast
    logits = F.linear(up(hidden), up(weight), None if bias is None else up(bias))  # (n, V) in fp32 or wider
    mask = targets != IGNORE_INDEX
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    safe_targets = targets.clamp(min=0)
    ce = torch.where(mask, lse - logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1), 0.0).sum()
    if alpha >= 1.0:
        return ce, torch.zeros((), dtype=ce.dtype, device=ce.device)
    scaled = logits / temperature if temperature != 1.0 else logits  # (n, V)
    lse_t = torch.logsumexp(scaled, dim=-1) if temperature != 1.0 else lse
    if kd == "sampled":
        per_token = -(scaled.gather(-1, sampled_ids) - lse_t.unsqueeze(-1)).mean(-1)
    else:
        log_p = teacher_partition(topk_logprobs, tail, temperature)
        log_q = student_partition(scaled, lse_t, topk_ids, tail)
        per_token = divergence(log_p, log_q, kd, beta)
    return ce, torch.where(mask, per_token, 0.0).sum()


def _check(
    alpha: float, kd: str, tail: str, temperature: float, targets: torch.Tensor, topk_ids, topk_logprobs, sampled_ids
) -> None:
    problems = []
    if not 0.0 <= alpha <= 1.0:
        problems.append(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        problems.append(f"temperature must be > 0, got {temperature}")
    if kd not in KD_KINDS:
        problems.append(f"kd must be one of {', '.join(KD_KINDS)}, got {kd!r}")
    if tail not in TAILS:
        problems.append(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")
    if alpha < 1.0 and kd == "sampled" and (sampled_ids is None or sampled_ids.shape[0] != targets.shape[0]):
        problems.append("kd='sampled' needs sampled_ids of shape (N, M)")
    if alpha < 1.0 and kd != "sampled":
        if topk_ids is None or topk_logprobs is None:
            problems.append("alpha < 1 needs the teacher's topk_ids and topk_logprobs")
        elif topk_ids.shape != topk_logprobs.shape or topk_ids.shape[0] != targets.shape[0]:
            problems.append(
                f"topk_ids {tuple(topk_ids.shape)} and topk_logprobs {tuple(topk_logprobs.shape)} "
                f"must both be (N={targets.shape[0]}, k)"
            )
    if problems:
        raise ValueError("; ".join(problems))


def distill_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None = None,
    topk_logprobs: torch.Tensor | None = None,
    sampled_ids: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    kd: str = "forward",
    tail: str = "bucket",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_size: int | None = None,
    bias: torch.Tensor | None = None,
) -> LossOutput:
    """α·CE + (1 − α)·τ²·KD, chunked over tokens with recomputation in backward.

    `chunk_size` None picks the largest power of two whose (chunk, V) fp32 logits fit 64 MiB
    (512 tokens at V=32,768, 64 at V=151,936), so loss memory stays flat whatever the vocabulary.

    hidden (N, H) final hidden states; weight (V, H) output layer; targets (N,) next-token ids with
    IGNORE_INDEX where masked; topk_ids / topk_logprobs (N, k) teacher top-k; sampled_ids (N, M).
    Returns means over unmasked positions (0 with a zero gradient when nothing is unmasked).
    """
    _check(alpha, kd, tail, temperature, targets, topk_ids, topk_logprobs, sampled_ids)
    chunk_size = chunk_size or auto_chunk_size(weight.shape[0])
    ce_sum = kd_sum = _upcast(hidden).sum() * 0.0  # keeps the graph connected when there are no chunks
    for start in range(0, hidden.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        ce, kd_part = checkpoint(
            _chunk_sums,
            hidden[sl],
            weight,
            bias,
            targets[sl],
            _rows(topk_ids, sl),
            _rows(topk_logprobs, sl),
            _rows(sampled_ids, sl),
            alpha,
            kd,
            tail,
            temperature,
            beta,
            use_reentrant=False,
        )
        ce_sum, kd_sum = ce_sum + ce, kd_sum + kd_part
    return _combine(ce_sum, kd_sum, targets, alpha, temperature)


CHUNK_ELEMENTS = 2**24  # logits per chunk: 64 MiB in fp32


def auto_chunk_size(vocab_size: int) -> int:
    """Tokens per chunk so that one chunk's logits hold at most CHUNK_ELEMENTS values (16 ≤ size ≤ 4096)."""
    return int(min(max(2 ** math.floor(math.log2(max(CHUNK_ELEMENTS // vocab_size, 1))), 16), 4096))


def _rows(t: torch.Tensor | None, sl: slice) -> torch.Tensor | None:
    return None if t is None else t[sl]


def naive_distill_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor | None = None,
    topk_logprobs: torch.Tensor | None = None,
    sampled_ids: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    kd: str = "forward",
    tail: str = "bucket",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_size: int = 0,
    bias: torch.Tensor | None = None,
) -> LossOutput:
    """The reference: the same loss with full (N, V) logits kept for backward. Tests and benchmarks only."""
    _check(alpha, kd, tail, temperature, targets, topk_ids, topk_logprobs, sampled_ids)
    ce, kd_sum = _chunk_sums(
        hidden, weight, bias, targets, topk_ids, topk_logprobs, sampled_ids, alpha, kd, tail, temperature, beta
    )  # (N, V) logits live until backward
    return _combine(ce, kd_sum, targets, alpha, temperature)


def _combine(
    ce_sum: torch.Tensor, kd_sum: torch.Tensor, targets: torch.Tensor, alpha: float, temperature: float
) -> LossOutput:
    n = int((targets != IGNORE_INDEX).sum())
    denom = max(n, 1)
    loss = (alpha * ce_sum + (1.0 - alpha) * temperature**2 * kd_sum) / denom
    return LossOutput(loss, (ce_sum / denom).detach(), (kd_sum / denom).detach(), n)
