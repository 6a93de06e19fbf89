"""distill.losses.onpolicy: reverse-KL advantages, the clipped objective and the position statistics,
against numbers worked out by hand and loop references."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import (
    grpo_objective,
    onpolicy_reverse_objective,
    reverse_kl_advantages,
    reverse_kl_by_position,
)

# 2×4: sequence 0 has four completion tokens, sequence 1 was truncated after two (padding holds junk)
MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
STUDENT = torch.tensor([[-1.0, -0.5, -2.0, -0.25], [-1.5, -0.1, 0.0, 0.0]])
TEACHER = torch.tensor([[-0.5, -1.0, -2.0, -1.25], [-0.5, -0.6, -math.inf, math.nan]])
# A = teacher − student on unmasked tokens, 0 elsewhere
HAND_ADVANTAGES = torch.tensor([[0.5, -0.5, 0.0, -1.0], [1.0, -0.5, 0.0, 0.0]])


def test_advantages_on_a_hand_computed_example() -> None:
    adv = reverse_kl_advantages(STUDENT, TEACHER, MASK)
    assert torch.equal(adv, HAND_ADVANTAGES)  # exact: the padding's −inf and NaN never reach the result
    assert adv.dtype == torch.float32
    # the sampling policy's logprobs are data, not a path for gradients
    assert not reverse_kl_advantages(STUDENT.clone().requires_grad_(), TEACHER, MASK).requires_grad


def test_loss_and_statistics_on_a_hand_computed_example() -> None:
    # ratios ρ = π_θ/π_θold; the padding's log-ratio of 50 must not matter
    ratio = torch.tensor([[1.0, 1.5, 1.0, 0.5], [1.1, 0.7, math.exp(50), math.exp(50)]])
    logp = STUDENT + ratio.log()
    # per token −min(ρA, clip(ρ, 0.8, 1.2)A):
    #   (0,0) ρ=1,   A=+0.5: −0.5
    #   (0,1) ρ=1.5, A=−0.5: −min(−0.75, −0.6) = 0.75  (the min keeps the pessimistic, unclipped side)
    #   (0,2) A=0: 0
    #   (0,3) ρ=0.5, A=−1:   −min(−0.5, −0.8) = 0.8    (clipped low)
    #   (1,0) ρ=1.1, A=+1:   −1.1
    #   (1,1) ρ=0.7, A=−0.5: −min(−0.35, −0.4) = 0.4   (clipped low)
    loss, stats = onpolicy_reverse_objective(logp, STUDENT, HAND_ADVANTAGES, MASK, 0.2, teacher_logprobs=TEACHER)
    assert loss.item() == pytest.approx((-0.5 + 0.75 + 0 + 0.8 - 1.1 + 0.4) / 6)  # 0.35 / 6
    seq, _ = onpolicy_reverse_objective(logp, STUDENT, HAND_ADVANTAGES, MASK, 0.2, aggregation="sequence")
    assert seq.item() == pytest.approx(((-0.5 + 0.75 + 0.8) / 4 + (-1.1 + 0.4) / 2) / 2)  # −0.04375
    assert stats["clip_low"].item() == pytest.approx(2 / 6)
    assert stats["clip_high"].item() == 0.0  # ρ = 1.5 exceeds 1.2 but its advantage is negative
    assert (stats["ratio_min"].item(), stats["ratio_max"].item()) == pytest.approx((0.5, 1.5))
    assert stats["tokens"].item() == 6
    assert "kl" not in stats
    # reverse KL = mean(student − teacher) = −ΣA/6; first quarters: (0,0), (1,0); last: (0,3), (1,1)
    assert stats["reverse_kl"].item() == pytest.approx(0.5 / 6)
    assert stats["reverse_kl_first_quarter"].item() == pytest.approx((-0.5 - 1.0) / 2)
    assert stats["reverse_kl_last_quarter"].item() == pytest.approx((1.0 + 0.5) / 2)
    # ε_high = 0.05 clips (1,0) on the high side: ρ = 1.1, A = +1 gives −min(1.1, 1.05) = −1.05
    tight, _ = onpolicy_reverse_objective(logp, STUDENT, HAND_ADVANTAGES, MASK, 0.2, epsilon_high=0.05)
    assert tight.item() == pytest.approx((-0.5 + 0.75 + 0.8 - 1.05 + 0.4) / 6)


def test_a_student_identical_to_the_teacher_gets_no_update() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.log_softmax(torch.randn(3, 5, 11, generator=g), -1).amax(-1)  # (3, 5) sampled-token logprobs
    mask = torch.tensor([[1.0] * 5, [1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    adv = reverse_kl_advantages(teacher, teacher, mask)
    assert torch.equal(adv, torch.zeros_like(adv))
    for aggregation in ("token", "sequence"):
        # off-policy ratios too: with every advantage 0 nothing moves, whatever ρ is
        for shift in (0.0, 0.3):
            logp = (teacher + shift * torch.randn(3, 5, generator=g)).requires_grad_()
            loss, stats = onpolicy_reverse_objective(
                logp, teacher, adv, mask, 0.2, aggregation=aggregation, teacher_logprobs=teacher
            )
            (grad,) = torch.autograd.grad(loss, logp)
            assert torch.equal(grad, torch.zeros_like(grad)), (aggregation, shift)
            assert loss.item() == 0.0
            assert stats["reverse_kl"].item() == 0.0


def test_gradient_at_ratio_one_is_minus_advantage_over_tokens() -> None:
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 6, generator=g) * 3
    mask = torch.tensor([[1.0] * 6, [1.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    adv = reverse_kl_advantages(old, old + torch.randn(3, 6, generator=g), mask)
    n, lengths = mask.sum(), mask.sum(-1, keepdim=True)
    for aggregation, want in (("token", -adv / n), ("sequence", -adv / (lengths * 3))):
        logp = old.clone().requires_grad_()
        loss, stats = onpolicy_reverse_objective(logp, old, adv, mask, 0.2, aggregation=aggregation)
        (grad,) = torch.autograd.grad(loss, logp)
        assert torch.allclose(grad, want, atol=1e-7), aggregation
        assert stats["ratio_mean"].item() == 1.0
    # descending it raises the logprob of tokens the teacher likes more than the student, lowers the others
    assert grad[adv > 0].lt(0).all() and grad[adv < 0].gt(0).all()


def test_clipped_tokens_give_no_gradient_and_the_others_do() -> None:
    # ε = 0.2, ε_high = 0.28: ρ ∈ [0.8, 1.28] is unclipped
    ratio = torch.tensor([[1.3, 0.7, 1.25, 1.3, 0.7, 1.0]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 2.0]])
    mask = torch.ones(1, 6)
    logp = ratio.log().requires_grad_()
    loss, stats = onpolicy_reverse_objective(logp, torch.zeros(1, 6), adv, mask, 0.2, epsilon_high=0.28)
    (grad,) = torch.autograd.grad(loss, logp)
    # d/dlogp of −ρA/N is −ρA/N where the clip does not bind
    want = torch.tensor([[0.0, 0.0, -1.25 / 6, 1.3 / 6, -0.7 / 6, -2.0 / 6]])
    assert torch.allclose(grad, want, atol=1e-7)
    assert grad[0, :2].eq(0).all()
    assert stats["clip_high"].item() == pytest.approx(1 / 6)
    assert stats["clip_low"].item() == pytest.approx(1 / 6)


def test_reward_mixing_adds_the_weighted_reward_to_its_own_sequence_only() -> None:
    rewards = torch.tensor([0.0, 2.0])
    pure = reverse_kl_advantages(STUDENT, TEACHER, MASK)
    assert torch.equal(reverse_kl_advantages(STUDENT, TEACHER, MASK, rewards, 0.0), pure)
    mixed = reverse_kl_advantages(STUDENT, TEACHER, MASK, rewards, 0.25)
    assert torch.equal(mixed - pure, torch.tensor([[0.0] * 4, [0.5, 0.5, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="reward_advantages"):
        reverse_kl_advantages(STUDENT, TEACHER, MASK, None, 0.25)
    with pytest.raises(ValueError, match="one per completion"):
        reverse_kl_advantages(STUDENT, TEACHER, MASK, torch.zeros(3), 0.25)


def test_quarters_match_a_loop_reference_on_different_lengths() -> None:
    g = torch.Generator().manual_seed(2)
    student = -torch.rand(6, 9, generator=g) * 4
    teacher = -torch.rand(6, 9, generator=g) * 4
    mask = torch.zeros(6, 9)
    for row, (start, length) in enumerate([(0, 1), (0, 2), (0, 3), (0, 5), (0, 9), (4, 0)]):
        mask[row, start : start + length] = 1
    mask[3, 7] = 1  # left padding / a hole: the completion's tokens are its unmasked ones, in order
    first, last, every = [], [], []
    for row in range(6):
        kl = [float(student[row, t] - teacher[row, t]) for t in range(9) if mask[row, t]]
        q = math.ceil(len(kl) / 4)
        every += kl
        first += kl[:q]
        last += kl[len(kl) - q :]
    got = reverse_kl_by_position(student, teacher, mask)
    assert got["reverse_kl"].item() == pytest.approx(sum(every) / len(every), rel=1e-6)
    assert got["reverse_kl_first_quarter"].item() == pytest.approx(sum(first) / len(first), rel=1e-6)
    assert got["reverse_kl_last_quarter"].item() == pytest.approx(sum(last) / len(last), rel=1e-6)
    empty = reverse_kl_by_position(student, teacher, torch.zeros(6, 9))
    assert all(v.item() == 0.0 for v in empty.values())


def test_sequence_constant_advantages_reduce_to_grpo() -> None:
    # one advantage per completion broadcast over its tokens: the per-token objective is grpo_objective's
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(4, 5, generator=g) * 2
    logp = old + 0.3 * torch.randn(4, 5, generator=g)
    mask = torch.tensor([[1.0] * 5, [1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    per_seq = torch.tensor([1.0, -0.5, 2.0, -1.5])
    adv = per_seq[:, None] * mask
    for aggregation, loss_type in (("token", "dapo"), ("sequence", "grpo")):
        ours, _ = onpolicy_reverse_objective(logp, old, adv, mask, 0.2, 0.3, aggregation)
        theirs, _ = grpo_objective(logp, old, None, per_seq, mask, 0.2, 0.3, 0.0, loss_type, 5)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-6), aggregation


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_micro_batches_add_up_to_the_whole_batch(aggregation: str) -> None:
    g = torch.Generator().manual_seed(4)
    old = -torch.rand(5, 4, generator=g) * 2
    logp = old + 0.3 * torch.randn(5, 4, generator=g)
    mask = (torch.rand(5, 4, generator=g) > 0.3).float()
    mask[:, 0] = 1
    adv = torch.randn(5, 4, generator=g)
    whole, _ = onpolicy_reverse_objective(logp, old, adv, mask, 0.2, aggregation=aggregation)
    totals = dict(batch_sequences=5, batch_tokens=int(mask.sum()))
    parts = [
        onpolicy_reverse_objective(logp[s], old[s], adv[s], mask[s], 0.2, aggregation=aggregation, **totals)[0]
        for s in (slice(0, 2), slice(2, 5))
    ]
    assert sum(parts).item() == pytest.approx(whole.item(), rel=1e-6)


def test_bad_arguments_are_refused_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="aggregation must be one of token, sequence"):
        onpolicy_reverse_objective(STUDENT, STUDENT, HAND_ADVANTAGES, MASK, 0.2, aggregation="dapo")
    with pytest.raises(ValueError, match=r"advantages \(2,\)"):
        onpolicy_reverse_objective(STUDENT, STUDENT, HAND_ADVANTAGES[:, 0], MASK, 0.2)
    with pytest.raises(ValueError, match="one shape"):
        reverse_kl_by_position(STUDENT, TEACHER[:, :3], MASK)


# ---------------------------------------------------------------------------------------------
# --kl-discount: the discounted reward-to-go of the per-token log-ratios, against exact enumerations


def test_discounted_advantages_on_a_hand_computed_example() -> None:
    # γ = 0.5 on HAND_ADVANTAGES' log-ratios: row 0 d = [0.5, −0.5, 0, −1] → A_3 = −1, A_2 = −0.5, A_1 = −0.75,
    # A_0 = 0.125; row 1 d = [1, −0.5] → A_1 = −0.5, A_0 = 0.75 (its padding's −inf and NaN never reach A)
    adv = reverse_kl_advantages(STUDENT, TEACHER, MASK, discount=0.5)
    assert torch.equal(adv, torch.tensor([[0.125, -0.75, -0.5, -1.0], [0.75, -0.5, 0.0, 0.0]]))
    whole = reverse_kl_advantages(STUDENT, TEACHER, MASK, discount=1.0)
    assert torch.equal(whole, torch.tensor([[-1.0, -1.5, -1.0, -1.0], [0.5, -0.5, 0.0, 0.0]]))
    assert torch.equal(reverse_kl_advantages(STUDENT, TEACHER, MASK, discount=0.0), HAND_ADVANTAGES)
    # the reward is per completion: added to every token after discounting, not summed along the way
    reward = reverse_kl_advantages(STUDENT, TEACHER, MASK, torch.tensor([1.0, -1.0]), 0.5, discount=1.0)
    assert torch.equal(reward, whole + torch.tensor([[0.5] * 4, [-0.5, -0.5, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"discount must be in \[0, 1\], got 1.5"):
        reverse_kl_advantages(STUDENT, TEACHER, MASK, discount=1.5)


VOCAB, EOS, HORIZON = 3, 2, 3  # a tabular policy: one row of logits per prefix; token 2 ends a completion


def _prefixes() -> list[tuple[int, ...]]:
    """Every prefix a completion can reach before it ends (EOS or the horizon)."""
    out, frontier = [], [()]
    while frontier:
        h = frontier.pop()
        out.append(h)
        if len(h) + 1 < HORIZON:
            frontier += [(*h, x) for x in range(VOCAB) if x != EOS]
    return sorted(out)


def _sequences() -> list[tuple[int, ...]]:
    """Every whole completion: ends with EOS, or is cut at the horizon."""
    return [(*h, x) for h in _prefixes() for x in range(VOCAB) if x == EOS or len(h) + 1 == HORIZON]


def _enumerated(theta: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token log π_θ and log π_T of every completion, (S, HORIZON) padded, its mask and its probability."""
    row = {h: i for i, h in enumerate(_prefixes())}
    seqs = _sequences()
    logp = torch.zeros(len(seqs), HORIZON, dtype=theta.dtype)
    teach = torch.zeros(len(seqs), HORIZON, dtype=theta.dtype)
    mask = torch.zeros(len(seqs), HORIZON)
    for i, x in enumerate(seqs):
        for t, tok in enumerate(x):
            logp[i, t] = torch.log_softmax(theta[row[x[:t]]], -1)[tok]
            teach[i, t] = torch.log_softmax(teacher[row[x[:t]]], -1)[tok]
            mask[i, t] = 1.0
    return {"logp": logp, "teacher": teach, "mask": mask, "prob": logp.sum(-1).exp()}


def _surrogate_gradient(theta: torch.Tensor, teacher: torch.Tensor, discount: float) -> torch.Tensor:
    """E_x[∇ of the clipped objective] over every completion x, each weighted by its probability (ρ = 1)."""
    e = _enumerated(theta, teacher)
    adv = reverse_kl_advantages(e["logp"].detach(), e["teacher"], e["mask"], discount=discount).double()
    n = e["mask"].sum()
    weighted = adv * e["prob"].detach()[:, None] * n  # the token mean's 1/N undone, each x weighed by π(x)
    loss, _ = onpolicy_reverse_objective(e["logp"], e["logp"].detach(), weighted, e["mask"], 0.2)
    return torch.autograd.grad(loss, theta)[0]


def test_discount_one_is_the_gradient_of_the_sequence_level_reverse_kl() -> None:
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(len(_prefixes()), VOCAB, generator=g, dtype=torch.float64).requires_grad_()
    teacher = 1.5 * torch.randn(len(_prefixes()), VOCAB, generator=g, dtype=torch.float64)
    e = _enumerated(theta, teacher)
    sequence_kl = (e["prob"] * (e["logp"] - e["teacher"]).sum(-1)).sum()  # Σ_x π(x) log π(x)/π_T(x), exact
    (want,) = torch.autograd.grad(sequence_kl, theta)
    got = _surrogate_gradient(theta, teacher, 1.0)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)  # float32 advantages: ~1e-7 relative
    # γ = 0 is not that gradient (the prefix held fixed): on this model they point 10°+ apart
    per_token = _surrogate_gradient(theta, teacher, 0.0)
    cosine = torch.nn.functional.cosine_similarity(per_token.flatten(), want.flatten(), dim=0)
    assert cosine < 0.99


def test_discount_zero_is_the_per_position_kl_with_the_prefix_held_fixed() -> None:
    """γ = 0: Σ over reachable prefixes h of P(h) · ∇KL(π_θ(·|h) ‖ π_T(·|h)), with P(h) not differentiated."""
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(len(_prefixes()), VOCAB, generator=g, dtype=torch.float64).requires_grad_()
    teacher = 1.5 * torch.randn(len(_prefixes()), VOCAB, generator=g, dtype=torch.float64)
    reach = {(): 1.0}
    for h in _prefixes():
        if h:
            reach[h] = reach[h[:-1]] * torch.softmax(theta[_prefixes().index(h[:-1])].detach(), -1)[h[-1]]
    held = sum(
        reach[h]
        * (torch.softmax(theta[i], -1) * (torch.log_softmax(theta[i], -1) - torch.log_softmax(teacher[i], -1))).sum()
        for i, h in enumerate(_prefixes())
    )
    (want,) = torch.autograd.grad(held, theta)
    assert torch.allclose(_surrogate_gradient(theta, teacher, 0.0), want, rtol=1e-5, atol=1e-6)
