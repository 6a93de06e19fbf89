"""On-policy distillation: the student's own samples, scored by the teacher, as dense per-token advantages.

The recipe (GKD with λ = 1, Agarwal et al. 2024; Qwen3; Thinking Machines' "On-Policy Distillation" and
its Tinker cookbook): each step the student samples completions, the teacher scores exactly those token
ids teacher-forced, and the student takes a policy-gradient step on them. For token t of completion i,
x_t the sampled token, π_θold the policy that sampled it, π_T the teacher, r_i the completion's
group-normalised verifier reward (`group_advantages`) and w its weight:

    A_it = −(log π_θold(x_t) − log π_T(x_t)) + w · r_i                        `reverse_kl_advantages`
    ℓ_it = −min(ρ_it A_it, clip(ρ_it, 1 − ε, 1 + ε_high) A_it),  ρ = π_θ/π_θold  `onpolicy_reverse_objective`
    loss = Σ_it m_it ℓ_it / N                  aggregation="token": every token weighs the same
    loss = (1/B) Σ_i Σ_t m_it ℓ_it / n_i       aggregation="sequence": every completion weighs the same

w = 0 is pure distillation; w > 0 mixes in GRPO. log π_θold(x_t) − log π_T(x_t) with x_t ~ π_θold is a
one-sample, unbiased estimate of KL(π_θold‖π_T) at that prefix; its mean over tokens is the logged
`reverse_kl`. At ρ = 1 the gradient is −Σ m_it A_it ∇log π_θ(x_t) / N: REINFORCE with the teacher's
per-token verdict as the advantage. By default each token is credited with its own term only (Tinker's default,
kl_discount_factor = 0), not the sum of the KL still to come: biased for the sequence KL, far lower variance.
With `discount` γ the advantage is the discounted reward-to-go Σ_{s≥t} γ^{s−t} (log π_T − log π_θold)(x_s). At
γ = 1 the expected gradient is exactly that of the sequence-level KL(π_θ‖π_T): ∇KL = E[Σ_t ∇log π_θ(x_t) ·
Σ_s (log π_θ − log π_T)(x_s)], and the terms with s < t vanish in expectation (they do not depend on x_t), so
only the reward-to-go is left (tests/losses/test_onpolicy.py enumerates a tabular model to check both γ).

Why reverse KL on the student's own samples:
- on-policy: the student is corrected on the prefixes it actually reaches, its own mistakes included;
  off-policy KD only shows it the teacher's prefixes, so at inference its errors compound unseen;
- mode seeking: KL(student‖teacher) punishes mass the student puts where the teacher puts little and
  does not ask a small student to spread itself over every teacher mode;
- dense credit: every token gets its own advantage (O(tokens) bits per rollout, not a verifier's O(1)),
  so it needs far fewer steps than RL, and a student identical to the teacher gets exactly no update.

What the stage must supply, all (batch, time) over the completion tokens:
- teacher_logprobs: log π_T of exactly the sampled ids, teacher-forced over the prompt rendered with the
  teacher's chat template followed by the student's completion ids verbatim (never re-tokenised text;
  the vocabularies must match). Completion token t is scored by the teacher's logits at sequence
  position p + t − 1, raw: full softmax at temperature 1, before any sampling processors.
- old_logprobs: π_θold of the same ids from the trainer's own forward right after the rollout (as the
  GRPO stage does), not the engine's. Sample at temperature 1: at τ ≠ 1 the samples come from π^τ and
  the estimate is of a different KL unless both sides are scored at τ.
- mask: 1 on tokens the student sampled, 0 on padding and on anything it did not generate.

`--loss topk` (GKD λ = 1) needs no new divergence and no adapter here. The stage writes the teacher's
scores of the rollouts as cache records (the student's prompt and sampled completion ids, the teacher's
top-k ids/logprobs and tail at each completion position), packs them as the train stage does
(`distill.data.collate`: targets are the sampled ids at the positions that predict them, IGNORE_INDEX
elsewhere) and calls `distill_loss` on the student's hidden states at those positions with alpha = 0:

    keep = targets != IGNORE_INDEX  # (B, L)
    out = distill_loss(hidden[keep], lm_head.weight, targets[keep], topk_ids[keep], topk_logprobs[keep],
                       tail_logprobs[keep], alpha=0.0, kd="reverse")

TRL's GKD β maps onto kd: β = 1 is kd="reverse", β = 0 kd="forward", 0 < β < 1 kd="jsd" with the same β.
Over the teacher's top-k plus a tail bucket the divergence is the coarse partition's, a lower bound on
the full-vocabulary one that is exact as k → V (see `distill.losses.kd`).

    adv = reverse_kl_advantages(old_logp, teacher_logp, mask)
    loss, stats = onpolicy_reverse_objective(logp, old_logp, adv, mask, 0.2, teacher_logprobs=teacher_logp)
"""

from __future__ import annotations

import torch

from distill.losses.grpo import grpo_objective

AGGREGATIONS = ("token", "sequence")


def _check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ValueError unless every tensor is (batch, time) with one common shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"expected (batch, time) tensors of one shape, got {listed}")


def _masked_mean(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """() mean of x over the True entries of `where` (both (batch, time)); 0 when there are none."""
    w = where.float()
    return (x * w).sum() / w.sum().clamp(min=1)


def reverse_kl_advantages(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    reward_advantages: torch.Tensor | None = None,
    reward_weight: float = 0.0,
    discount: float = 0.0,
) -> torch.Tensor:
    """Dense per-token advantages: A_t = Σ_{s≥t} γ^{s−t} (log π_T − log π_θold)(x_s) [+ w · r_i], 0 where mask is 0.

    student_logprobs: (batch, time) the sampling policy π_θold's logprobs of the sampled tokens (detached here).
    teacher_logprobs: (batch, time) the teacher's logprobs of the same tokens, teacher-forced.
    mask: (batch, time) 1/True on completion tokens, 0/False on padding (which may hold −inf or NaN).
    reward_advantages: (batch,) one group-normalised reward per completion (`group_advantages`), or None.
    reward_weight: w; each completion's w · r_i is added to every one of its unmasked tokens.
    discount: γ in [0, 1]. 0: each token its own log-ratio (the prefix held fixed; Tinker's default); 1: the
        log-ratios of the whole rest of the completion, which makes the policy gradient that of the
        sequence-level KL(π_θ‖π_T) (module docstring); between: a discounted reward-to-go.
    Returns (batch, time) float32, without grad.
    """
    _check_same_shape(student_logprobs=student_logprobs, teacher_logprobs=teacher_logprobs, mask=mask)
    if reward_weight != 0 and reward_advantages is None:
        raise ValueError(f"reward_weight={reward_weight} needs reward_advantages, one per completion")
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be in [0, 1], got {discount}")
    adv = teacher_logprobs.detach().float() - student_logprobs.detach().float()  # (B, T) −(log π_θold − log π_T)
    if discount > 0:
        adv = _reward_to_go(torch.where(mask.bool(), adv, 0.0), discount)
    if reward_advantages is not None:
        if tuple(reward_advantages.shape) != (adv.shape[0],):
            raise ValueError(
                f"reward_advantages must be (batch,) = ({adv.shape[0]},), one per completion, "
                f"got {tuple(reward_advantages.shape)}"
            )
        adv = adv + reward_weight * reward_advantages.detach().float()[:, None]
    # where, not a product: 0 · (−inf) on padding would be NaN
    return torch.where(mask.bool(), adv, 0.0)


def _reward_to_go(x: torch.Tensor, discount: float) -> torch.Tensor:
    """(B, T) → (B, T): Σ_{s≥t} γ^{s−t} x_s along time (x is 0 past each completion's end)."""
    if discount == 1.0:
        return x.flip(-1).cumsum(-1).flip(-1)
    out, running = torch.empty_like(x), torch.zeros_like(x[:, 0])
    for t in range(x.shape[1] - 1, -1, -1):  # T small ops of (B,): cheap next to the forward passes
        running = x[:, t] + discount * running
        out[:, t] = running
    return out


def onpolicy_reverse_objective(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float,
    epsilon_high: float | None = None,
    aggregation: str = "token",
    *,
    teacher_logprobs: torch.Tensor | None = None,
    batch_sequences: int | None = None,
    batch_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy-gradient surrogate over per-token advantages (to minimise) and detached statistics.

    logprobs: (batch, time) the current policy's logprobs of the sampled tokens (with grad).
    old_logprobs: (batch, time) π_θold's, saved right after the rollout (no grad).
    advantages: (batch, time) per token, from `reverse_kl_advantages`.
    mask: (batch, time) 1 on completion tokens, 0 on padding.
    epsilon, epsilon_high: ρ is clipped to [1 − epsilon, 1 + epsilon_high] (epsilon_high None: epsilon).
    aggregation: "token" (mean over every unmasked token) or "sequence" (mean per completion, then over
        completions); see the module docstring.
    teacher_logprobs: (batch, time) or None; when given, stats add `reverse_kl_by_position(old_logprobs, ...)`.
    batch_sequences, batch_tokens: completions and unmasked tokens of the whole batch when these tensors
        are one micro-batch of it, so that the micro-batches' losses add up to the batch's.
    Returns (loss, stats); stats holds grpo_objective's token means `clip_low`, `clip_high`, `ratio_mean`,
    `ratio_min`, `ratio_max`, `policy_loss` and `tokens` (not its `kl`: there is no reference model).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    time = logprobs.shape[1]
    a = torch.where(mask.bool(), advantages.detach().float(), 0.0)  # (B, T)
    # grpo's clipped ratio with one advantage per token; β = 0: no reference model. "token" is its dapo
    # aggregation (Σ m·ℓ / tokens), "sequence" its grpo one (mean per completion, then over completions)
    loss, stats = grpo_objective(
        logprobs,
        old_logprobs,
        None,
        a,
        mask,
        epsilon,
        epsilon if epsilon_high is None else epsilon_high,
        0.0,
        "dapo" if aggregation == "token" else "grpo",
        time,
        batch_sequences=batch_sequences,
        batch_tokens=batch_tokens,
    )
    del stats["kl"]
    if teacher_logprobs is not None:
        stats.update(reverse_kl_by_position(old_logprobs, teacher_logprobs, mask))
    return loss, stats


def reverse_kl_by_position(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-token reverse-KL estimates log π_student − log π_teacher, averaged overall and by position.

    student_logprobs, teacher_logprobs, mask: (batch, time); a completion's tokens are its unmasked ones,
    counted in order (j = 0 … n_i − 1), so left padding and holes in the mask are fine.
    Returns () float32 tensors, 0 when no token counts: `reverse_kl`, the mean over every unmasked token;
    `reverse_kl_first_quarter` / `reverse_kl_last_quarter`, the mean over the tokens with j < n_i/4 /
    n_i − 1 − j < n_i/4, i.e. each completion's first / last ⌈n_i/4⌉ tokens split by its own length,
    pooled over the batch. Where the student drifts from the teacher late in long completions, the
    last quarter shows it before the mean does.
    """
    _check_same_shape(student_logprobs=student_logprobs, teacher_logprobs=teacher_logprobs, mask=mask)
    with torch.no_grad():
        on = mask.bool()
        kl = torch.where(on, student_logprobs.float() - teacher_logprobs.float(), 0.0)  # (B, T)
        n = on.sum(-1, keepdim=True)  # (B, 1) completion lengths
        j = on.cumsum(-1) - 1  # (B, T) rank of each token within its completion
        return {
            "reverse_kl": _masked_mean(kl, on),
            "reverse_kl_first_quarter": _masked_mean(kl, on & (4 * j < n)),
            "reverse_kl_last_quarter": _masked_mean(kl, on & (4 * (n - 1 - j) < n)),
        }
