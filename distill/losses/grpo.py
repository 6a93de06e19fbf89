"""The GRPO objective as pure tensor functions: group advantages, the k3 KL, the clipped surrogate.

Per completion token t of sequence i, with ρ = π_θ/π_θold = exp(logp − old_logp):

    ℓ_it = −min(ρ·A_i, clip(ρ, 1 − ε_low, 1 + ε_high)·A_i) + β·KL_k3,
    KL_k3 = π_ref/π_θ − log(π_ref/π_θ) − 1            (Schulman's k3: unbiased, always ≥ 0)

aggregated over the batch by `loss_type`:

    grpo     mean over each sequence's tokens, then mean over sequences (DeepSeekMath);
             long completions weigh each token less
    dapo     mean over every token of the batch (DAPO); every token weighs the same
    dr_grpo  sum over every token / (batch_size × max_new_tokens) (Dr. GRPO); a constant
             normaliser, so neither length nor batch composition rescales a token's gradient

A micro-batch gives the whole batch's totals (`batch_sequences`, `batch_tokens`), so the losses of
the micro-batches add up to the loss of the whole batch.

    A = group_advantages(rewards, group_size=8)
    loss, stats = grpo_objective(logp, old_logp, ref_logp, A, mask, 0.2, 0.2, 0.04, "grpo", 1024)
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
SCALE_REWARDS = ("group", "none")
ADVANTAGE_EPS = 1e-4


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = ADVANTAGE_EPS
) -> torch.Tensor:
    """Advantages normalised within each group of `group_size` consecutive completions.

    rewards: (num_groups * group_size,); NaN marks a sample whose reward could not be computed —
        it is left out of its group's statistics and gets advantage 0.
    scale: "group" gives A_i = (r_i − mean) / (std + eps) (std unbiased, as DeepSeekMath / TRL);
        "none" gives A_i = r_i − mean (Dr. GRPO: the std rescales easy and hard prompts unequally).
    Returns (num_groups * group_size,) float32. A group whose valid rewards are all equal (zero
    spread), or that has fewer than two valid rewards, gets exactly 0.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale must be one of {', '.join(SCALE_REWARDS)}, got {scale!r}")
    r = rewards.float().view(-1, group_size)  # (G_n, G)
    valid = ~torch.isnan(r)
    n = valid.sum(-1, keepdim=True)  # (G_n, 1)
    r0 = torch.where(valid, r, 0.0)
    mean = r0.sum(-1, keepdim=True) / n.clamp(min=1)
    dev = torch.where(valid, r - mean, 0.0)
    adv = dev
    if scale == "group":
        std = (dev.pow(2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        adv = dev / (std + eps)
    # exact zeros where there is nothing to compare (mean of equal floats can be off by one ulp)
    hi = torch.where(valid, r, -torch.inf).amax(-1, keepdim=True)
    lo = torch.where(valid, r, torch.inf).amin(-1, keepdim=True)
    flat = (hi == lo) | (n < 2)
    adv = torch.where(valid & ~flat, adv, 0.0)
    return adv.view(-1)


def zero_spread_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(num_groups,) bool: groups whose valid rewards are all equal (their advantages are all 0)."""
    r = rewards.float().view(-1, group_size)
    valid = ~torch.isnan(r)
    hi = torch.where(valid, r, -torch.inf).amax(-1)
    lo = torch.where(valid, r, torch.inf).amin(-1)
    return (hi == lo) | (valid.sum(-1) < 2)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ‖π_ref) from the sampled tokens' logprobs: e^d − d − 1, d = ref − logp.

    logp, ref_logp: (batch_size, num_tokens). Returns (batch_size, num_tokens), ≥ 0, 0 where equal.
    """
    # float64 and expm1: in float32, e^d − 1 − d cancels to noise (and below 0) for the |d| ~ 1e-4 a
    # confident policy sees, and the KL term would push on rounding error
    d = ref_logp.double() - logp.double()
    return (torch.expm1(d) - d).float()


def grpo_objective(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    beta: float,
    loss_type: str,
    max_new_tokens: int,
    *,
    batch_sequences: int | None = None,
    batch_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped GRPO loss (to minimise) and detached statistics.

    logp: (batch_size, num_tokens) the current policy's logprobs of the sampled tokens (with grad).
    old_logp: (batch_size, num_tokens) π_θold's, saved right after the rollout (no grad).
    ref_logp: (batch_size, num_tokens) the frozen reference's, or None when beta == 0.
    advantages: (batch_size,) one per sequence, or (batch_size, num_tokens) one per token (on-policy
        distillation's reverse-KL advantages: distill.losses.onpolicy).
    mask: (batch_size, num_tokens) 1 on completion tokens, 0 on padding.
    batch_sequences, batch_tokens: sequences and unmasked tokens of the whole batch when these
        tensors are one micro-batch of it (default: these tensors are the whole batch).
    Returns (loss, stats); stats holds token means `kl`, `clip_low`, `clip_high`, `ratio_mean`,
    `ratio_min`, `ratio_max`, the aggregated policy term `policy_loss`, and `tokens`.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    if beta != 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp")
    m = mask.float()
    a = advantages.float()
    a = a[:, None] if a.dim() == 1 else a  # (B, 1) or (B, T)
    log_ratio = (logp.float() - old_logp.float()) * m  # zero on padding: ratio 1, no overflow there
    ratio = torch.exp(log_ratio)  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    policy = -torch.min(ratio * a, clipped * a)  # (B, T)
    per_token = policy
    kl = k3_kl(logp, ref_logp) * m if ref_logp is not None else torch.zeros_like(m)
    if beta != 0:
        per_token = per_token + beta * kl

    seqs = batch_sequences if batch_sequences is not None else logp.shape[0]
    toks = batch_tokens if batch_tokens is not None else int(m.sum())

    def aggregate(x: torch.Tensor) -> torch.Tensor:
        if loss_type == "grpo":
            return ((x * m).sum(-1) / m.sum(-1).clamp(min=1)).sum() / max(seqs, 1)
        if loss_type == "dapo":
            return (x * m).sum() / max(toks, 1)
        return (x * m).sum() / (max(seqs, 1) * max_new_tokens)

    loss = aggregate(per_token)
    with torch.no_grad():
        n = m.sum().clamp(min=1)
        on = m.bool()
        big = torch.finfo(ratio.dtype).max
        stats = {
            "policy_loss": aggregate(policy).detach(),
            "kl": (kl * m).sum() / n,
            # the clip is active (gradient zero) only on the side where it binds for this advantage's sign
            "clip_low": (((ratio < 1 - eps_low) & (a < 0)).float() * m).sum() / n,
            "clip_high": (((ratio > 1 + eps_high) & (a > 0)).float() * m).sum() / n,
            "ratio_mean": (ratio * m).sum() / n,
            "ratio_min": torch.where(on, ratio, big).min() if on.any() else torch.ones(()),
            "ratio_max": torch.where(on, ratio, -big).max() if on.any() else torch.ones(()),
            "tokens": m.sum(),
        }
    return loss, stats
