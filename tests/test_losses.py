"""Losses: chunked equals naive (loss and gradients, every variant), and both equal the textbook formulas."""

from __future__ import annotations

import itertools

import pytest
import torch

from distill.losses import IGNORE_INDEX, KD_KINDS, TAILS, distill_loss, naive_distill_loss

N, H, V, K, M = 37, 16, 50, 6, 4


def make(seed: int = 0, k: int = K, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype) * 0.5
    targets = torch.randint(0, V, (N,), generator=g)
    targets[[0, 5, 6, 20, 36]] = IGNORE_INDEX  # masked positions
    teacher_logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    top = torch.topk(torch.log_softmax(teacher_logits, -1), k, dim=-1)
    sampled = torch.multinomial(torch.softmax(teacher_logits, -1), M, replacement=True, generator=g)
    lps = top.values.to(dtype)  # the cache stores fp32; fp64 keeps the exact-KL reference exact
    return hidden, weight, targets, top.indices, lps, sampled, teacher_logits


def grads(fn, hidden, weight, **kw):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = fn(h, w, **kw)
    out.loss.backward()
    return out, h.grad, w.grad


@pytest.mark.parametrize(("kd", "tail"), list(itertools.product(KD_KINDS, TAILS)))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_chunked_equals_naive_for_loss_and_gradients(kd: str, tail: str, temperature: float, alpha: float) -> None:
    hidden, weight, targets, ids, lps, sampled, _ = make()
    kw = dict(
        targets=targets,
        topk_ids=ids,
        topk_logprobs=lps,
        sampled_ids=sampled,
        alpha=alpha,
        kd=kd,
        tail=tail,
        temperature=temperature,
        beta=0.3,
    )
    a, ha, wa = grads(distill_loss, hidden, weight, chunk_size=8, **kw)  # 8 does not divide 37
    b, hb, wb = grads(naive_distill_loss, hidden, weight, **kw)
    assert a.num_tokens == b.num_tokens == N - 5
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(ha, hb, atol=1e-5, rtol=0)
    torch.testing.assert_close(wa, wb, atol=1e-5, rtol=0)
    if alpha < 1:
        assert a.kd > 0
    assert hb[[0, 5, 6, 20, 36]].abs().max() == 0  # masked positions get no gradient


def test_full_vocabulary_top_k_is_exact_kl() -> None:
    hidden, weight, targets, ids, lps, _, teacher_logits = make(k=V, dtype=torch.float64)
    out = distill_loss(hidden, weight, targets, ids, lps, alpha=0.0, chunk_size=16)
    log_p = torch.log_softmax(teacher_logits, -1)
    log_q = torch.log_softmax(hidden @ weight.T, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)[targets != IGNORE_INDEX].mean()
    torch.testing.assert_close(out.kd, kl, atol=1e-5, rtol=0)
    renorm = distill_loss(hidden, weight, targets, ids, lps, alpha=0.0, tail="renorm", chunk_size=16)
    torch.testing.assert_close(renorm.kd, kl, atol=1e-5, rtol=0)
    reverse = distill_loss(hidden, weight, targets, ids, lps, alpha=0.0, kd="reverse")
    rkl = (log_q.exp() * (log_q - log_p)).sum(-1)[targets != IGNORE_INDEX].mean()
    torch.testing.assert_close(reverse.kd, rkl, atol=1e-5, rtol=0)


def test_ce_is_cross_entropy_and_alpha_one_needs_no_teacher() -> None:
    hidden, weight, targets, *_ = make()
    out = distill_loss(hidden, weight, targets, alpha=1.0)
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=0)
    assert out.kd == 0


def test_kd_is_zero_when_the_student_is_the_teacher() -> None:
    hidden, weight, targets, *_ = make()
    logits = hidden @ weight.T
    top = torch.topk(torch.log_softmax(logits, -1), K, dim=-1)
    for kd, tail in itertools.product(("forward", "reverse", "jsd"), TAILS):
        out = distill_loss(hidden, weight, targets, top.indices, top.values, alpha=0.0, kd=kd, tail=tail)
        assert abs(float(out.kd)) < 1e-6, (kd, tail)


def test_sampled_kd_estimates_the_cross_entropy_to_the_teacher() -> None:
    hidden, weight, targets, _, _, _, teacher_logits = make(dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    many = torch.multinomial(torch.softmax(teacher_logits, -1), 4000, replacement=True, generator=g)
    out = distill_loss(hidden, weight, targets, sampled_ids=many, alpha=0.0, kd="sampled")
    log_q = torch.log_softmax(hidden @ weight.T, -1)
    ce = -(torch.softmax(teacher_logits, -1) * log_q).sum(-1)[targets != IGNORE_INDEX].mean()
    assert float(out.kd) == pytest.approx(float(ce), rel=0.02)


def test_all_masked_gives_zero_loss_and_zero_gradient() -> None:
    hidden, weight, targets, ids, lps, *_ = make()
    out, gh, gw = grads(
        distill_loss,
        hidden,
        weight,
        targets=torch.full_like(targets, IGNORE_INDEX),
        topk_ids=ids,
        topk_logprobs=lps,
        alpha=0.5,
    )
    assert out.num_tokens == 0 and float(out.loss.detach()) == 0.0
    assert torch.isfinite(gh).all() and gh.abs().max() == 0 and gw.abs().max() == 0


def test_temperature_scales_kd_by_tau_squared_in_the_total() -> None:
    hidden, weight, targets, ids, lps, *_ = make()
    out = distill_loss(hidden, weight, targets, ids, lps, alpha=0.25, temperature=2.0)
    torch.testing.assert_close(out.loss, 0.25 * out.ce + 0.75 * 4.0 * out.kd, atol=1e-6, rtol=0)


def test_bad_arguments_are_sentences() -> None:
    hidden, weight, targets, ids, lps, *_ = make()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        distill_loss(hidden, weight, targets, ids, lps, alpha=2.0)
    with pytest.raises(ValueError, match="needs the teacher's topk_ids"):
        distill_loss(hidden, weight, targets, alpha=0.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distill_loss(hidden, weight, targets, ids, lps, temperature=0.0)


def test_auto_chunk_size_bounds_loss_memory_by_vocabulary() -> None:
    from distill.losses import CHUNK_ELEMENTS, auto_chunk_size

    assert auto_chunk_size(32_768) == 512 and auto_chunk_size(151_936) == 64
    assert all(auto_chunk_size(v) * v <= CHUNK_ELEMENTS for v in (1000, 32_768, 151_936, 262_144))
    hidden, weight, targets, ids, lps, *_ = make()
    auto = distill_loss(hidden, weight, targets, ids, lps)  # V=50 → one chunk of everything
    torch.testing.assert_close(auto.loss, naive_distill_loss(hidden, weight, targets, ids, lps).loss)
