"""distill.losses.grpo: advantages, k3 KL and the clipped objective, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import group_advantages, grpo_objective, k3_kl, zero_spread_groups


def objective(logp, old, adv, mask, loss_type="grpo", beta=0.0, ref=None, eps=0.2, eps_high=None, **kw):
    eps_high = eps if eps_high is None else eps_high
    return grpo_objective(logp, old, ref, adv, mask, eps, eps_high, beta, loss_type, kw.pop("max_new_tokens", 4), **kw)


# ---------------------------------------------------------------------------------------------
# advantages


def test_group_advantages_normalised_and_mean_only() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 2.0, 0.0])
    # group 1: mean 0.25, unbiased std sqrt((0.75² + 3·0.25²)/3) = 0.5 → (1.5, −0.5, −0.5, −0.5)
    # group 2: mean 1, std sqrt(4·1/3) = 1.1547 → ±0.8660
    a = group_advantages(r, 4, "group", eps=0.0)
    s = 1 / math.sqrt(4 / 3)
    assert torch.allclose(a, torch.tensor([1.5, -0.5, -0.5, -0.5, s, -s, s, -s]), atol=1e-6)
    # ε keeps the division finite: 0.75 / (0.5 + 1e-4)
    assert group_advantages(r, 4)[0].item() == pytest.approx(0.75 / 0.5001, rel=1e-6)
    m = group_advantages(r, 4, "none")
    assert torch.allclose(m, torch.tensor([0.75, -0.25, -0.25, -0.25, 1.0, -1.0, 1.0, -1.0]))


def test_zero_spread_group_gets_exact_zeros_and_nan_rewards_are_left_out() -> None:
    r = torch.tensor([0.3, 0.3, 0.3, 0.3, 1.0, math.nan, 0.0, 0.0])
    a = group_advantages(r, 4, "group", eps=0.0)
    assert torch.equal(a[:4], torch.zeros(4))  # exactly 0, not 1e-8
    # group 2 without the NaN: (1, 0, 0), mean 1/3, unbiased std sqrt(1/3)
    assert a[5].item() == 0.0
    assert a[4].item() == pytest.approx((2 / 3) / math.sqrt(1 / 3), rel=1e-5)
    assert a[6].item() == pytest.approx((-1 / 3) / math.sqrt(1 / 3), rel=1e-5)
    assert zero_spread_groups(r, 4).tolist() == [True, False]
    one_valid = torch.tensor([1.0, math.nan, math.nan, math.nan])
    assert torch.equal(group_advantages(one_valid, 4), torch.zeros(4))
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(6), 4)


# ---------------------------------------------------------------------------------------------
# k3 KL


def test_k3_matches_the_closed_form_kl_in_expectation_and_is_nonnegative() -> None:
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(3, 11, generator=g, dtype=torch.float64), -1)  # π_θ over 11 tokens
    logq = torch.log_softmax(torch.randn(3, 11, generator=g, dtype=torch.float64), -1)  # π_ref
    # E_{x~π_θ}[k3] = Σ π_θ (π_ref/π_θ − 1) − Σ π_θ log(π_ref/π_θ) = 0 + KL(π_θ‖π_ref)
    expected = (logp.exp() * (logp - logq)).sum(-1)
    estimated = (logp.exp() * k3_kl(logp, logq).double()).sum(-1)
    assert torch.allclose(estimated, expected, atol=1e-6)
    assert (k3_kl(logp, logq) >= 0).all()
    assert torch.equal(k3_kl(logp, logp), torch.zeros_like(logp, dtype=torch.float32))
    # a confident policy: logprobs near 0 and differences near float32's resolution still give ≥ 0
    near = -torch.rand(10_000, generator=g) * 1e-4
    other = near + (torch.rand(10_000, generator=g) - 0.5) * 1e-6
    assert (k3_kl(near, other) >= 0).all()
    # one token by hand: π_ref/π_θ = 2 → 2 − ln 2 − 1
    assert k3_kl(torch.tensor([0.0]), torch.tensor([math.log(2)])).item() == pytest.approx(1 - math.log(2))


# ---------------------------------------------------------------------------------------------
# the objective


def hand_example() -> tuple[torch.Tensor, ...]:
    # sequence 0 (A = +1): ratios 1.5 and 0.5; sequence 1 (A = −1): ratio 0.5 and one padding token
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5], [0.5, 1.0]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    return logp, old, adv, mask


def test_loss_on_a_hand_computed_example() -> None:
    logp, old, adv, mask = hand_example()
    # per token −min(ρA, clip(ρ, 0.8, 1.2)A):
    #   (0,0) ρ=1.5, A=+1: −min(1.5, 1.2) = −1.2   (clipped high)
    #   (0,1) ρ=0.5, A=+1: −min(0.5, 0.8) = −0.5   (not clipped: the min keeps the pessimistic side)
    #   (1,0) ρ=0.5, A=−1: −min(−0.5, −0.8) = 0.8  (clipped low)
    loss, stats = objective(logp, old, adv, mask, "grpo")
    assert loss.item() == pytest.approx(((-1.2 - 0.5) / 2 + 0.8) / 2)  # sequence means, then mean: −0.025
    assert objective(logp, old, adv, mask, "dapo")[0].item() == pytest.approx((-1.2 - 0.5 + 0.8) / 3)  # −0.3
    # Dr. GRPO: sum / (batch size 2 × max_new_tokens 4)
    assert objective(logp, old, adv, mask, "dr_grpo")[0].item() == pytest.approx(-0.9 / 8)
    assert stats["clip_high"].item() == pytest.approx(1 / 3)
    assert stats["clip_low"].item() == pytest.approx(1 / 3)
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 0.5) / 3)
    assert (stats["ratio_min"].item(), stats["ratio_max"].item()) == pytest.approx((0.5, 1.5))
    assert stats["kl"].item() == 0.0
    # DAPO clip-higher: ε_high 0.6 lets ρ = 1.5 through unclipped: (−1.5 − 0.5 + 0.8) / 3
    assert objective(logp, old, adv, mask, "dapo", eps_high=0.6)[0].item() == pytest.approx(-0.4)
    # β·k3: the reference puts twice the policy's probability on token (0,0) and agrees elsewhere
    ref = logp.clone()
    ref[0, 0] += math.log(2)
    loss_kl, stats_kl = objective(logp, old, adv, mask, "dapo", beta=0.5, ref=ref)
    assert loss_kl.item() == pytest.approx(-0.3 + 0.5 * (1 - math.log(2)) / 3)
    assert stats_kl["kl"].item() == pytest.approx((1 - math.log(2)) / 3)


def test_on_policy_clipped_gradient_equals_the_unclipped_one() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, 7, generator=g, requires_grad=True)
    targets = torch.randint(0, 7, (4, 5), generator=g)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([1.3, -0.7, 0.2, -2.0])
    # μ = 1: π_θold is the same policy, so ρ = 1 and the clip never binds
    loss, stats = objective(logp, logp.detach(), adv, mask, "grpo")
    (clipped,) = torch.autograd.grad(loss, logits, retain_graph=True)
    ratio = torch.exp(logp - logp.detach())
    plain = (-(ratio * adv[:, None]) * mask).sum(-1) / mask.sum(-1)
    (unclipped,) = torch.autograd.grad(plain.mean(), logits)
    assert torch.allclose(clipped, unclipped, atol=1e-7)
    assert clipped.abs().sum() > 0
    assert stats["clip_low"].item() == stats["clip_high"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0


def test_groups_with_zero_reward_spread_contribute_no_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 6, 9, generator=g, requires_grad=True)
    targets = torch.randint(0, 9, (8, 6), generator=g)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    old = (logp + 0.1 * torch.randn(8, 6, generator=g)).detach()  # off-policy: ratios ≠ 1
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0])  # group 0 all correct
    adv = group_advantages(rewards, 4)
    for loss_type in ("grpo", "dapo", "dr_grpo"):
        loss, _ = objective(logp, old, adv, torch.ones(8, 6), loss_type)
        (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        assert torch.equal(grad[:4], torch.zeros_like(grad[:4])), loss_type
        assert grad[4:].abs().sum() > 0, loss_type


def test_the_three_aggregations_weigh_tokens_as_specified() -> None:
    # at ρ = 1 and β = 0, ∂loss/∂logp[i, t] = −A_i · w_it with
    #   grpo: 1 / (|o_i| · B)   dapo: 1 / (tokens in the batch)   dr_grpo: 1 / (B · max_new_tokens)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, 1.0, -1.0])
    lengths, b, n = mask.sum(-1, keepdim=True), 3, 7
    expected = {
        "grpo": -adv[:, None] * mask / (lengths * b),
        "dapo": -adv[:, None] * mask / n,
        "dr_grpo": -adv[:, None] * mask / (b * 10),
    }
    grads = {}
    for loss_type, want in expected.items():
        logp = torch.zeros(3, 4, requires_grad=True)
        loss, _ = objective(logp, logp.detach(), adv, mask, loss_type, max_new_tokens=10)
        (grads[loss_type],) = torch.autograd.grad(loss, logp)
        assert torch.allclose(grads[loss_type], want), loss_type
    # they differ: the one-token sequence's token weighs 1/3 under grpo, 1/7 under dapo, 1/30 under dr_grpo
    assert len({round(float(g[1, 0]), 6) for g in grads.values()}) == 3


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_add_up_to_the_whole_batch(loss_type: str) -> None:
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(6, 5, generator=g) - 2
    old = logp + 0.3 * torch.randn(6, 5, generator=g)
    ref = logp + 0.3 * torch.randn(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    mask[:, 0] = 1
    adv = torch.randn(6, generator=g)
    whole, _ = objective(logp, old, adv, mask, loss_type, beta=0.1, ref=ref)
    totals = dict(batch_sequences=6, batch_tokens=int(mask.sum()))
    parts = [
        objective(logp[s], old[s], adv[s], mask[s], loss_type, beta=0.1, ref=ref[s], **totals)[0]
        for s in (slice(0, 2), slice(2, 6))
    ]
    assert sum(parts).item() == pytest.approx(whole.item(), rel=1e-6)
