"""Losses: chunked equals naive (loss and gradients, every variant), both equal the textbook formulas
(full-vocabulary references and hand-computed cases), sampled KD is unbiased for the full KL, the teacher as
its own student sees KD ≈ 0, and chunking bounds peak memory."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    CHUNK_ELEMENTS,
    IGNORE_INDEX,
    KD_KINDS,
    TAILS,
    auto_chunk_size,
    distill_loss,
    measure_peak_memory,
    naive_distill_loss,
    teacher_partition,
)

N, H, V, K, M = 37, 16, 50, 6, 4
MASKED = [0, 5, 6, 20, 36]
CONFIDENT = [1, 2, 3]  # rows where the student puts < 1e-4 outside the teacher's top-k: the exact-tail path
TEACHER_KEYS = ("topk_ids", "topk_logprobs", "tail_logprobs", "extra_ids", "extra_logprobs")


def tempered(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n, V) log p_τ: the teacher's full-vocabulary logprobs softened by τ, what sampled KD draws from."""
    return torch.log_softmax(torch.log_softmax(teacher_logits, -1) / temperature, -1)


def log_mass_outside(log_p: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(n,) exact log of the mass of log_p (n, V) outside ids (n, k): a logsumexp over the complement, −inf if k = V."""
    return log_p.scatter(-1, ids, -math.inf).logsumexp(-1)


def refused(kd: str, tail: str, temperature: float, alpha: float = 0.0) -> bool:
    """Whether the loss must refuse these settings: the bucket tail's tempered mass is unknown at τ ≠ 1."""
    return alpha < 1 and kd != "sampled" and tail == "bucket" and temperature != 1


def bucket_refusal(temperature: float) -> str:
    """The start of the sentence that refuses tail='bucket' at temperature τ ≠ 1, as a regex."""
    return rf"tail='bucket' at temperature {temperature} would need the teacher's tempered tail mass"


def make(seed: int = 0, k: int = K, dtype: torch.dtype = torch.float32, temperature: float = 1.0) -> dict:
    """A batch of N positions: student hidden (N, H) and weight (V, H), targets (N,) with masked rows, teacher
    top-k ids / logprobs (N, k) and the exact log mass outside them (N,), M tokens drawn from the teacher at
    `temperature` with their teacher logprobs log p_τ (N, M), and the full teacher logits (N, V)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    targets = torch.randint(0, V, (N,), generator=g)
    targets[MASKED] = IGNORE_INDEX
    teacher_logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    log_p = torch.log_softmax(teacher_logits, -1)
    top = torch.topk(log_p, k, dim=-1)
    ids = top.indices.clone()
    if k < V:  # sharpen some rows and let the teacher's top-k be the student's own top-k there
        hidden[CONFIDENT] *= 12
        ids[CONFIDENT] = torch.topk(hidden[CONFIDENT] @ weight.T, k, dim=-1).indices
    log_p_tau = tempered(teacher_logits, temperature)
    extra = torch.multinomial(log_p_tau.exp(), M, replacement=True, generator=g)
    return dict(
        hidden=hidden.to(dtype),
        weight=weight.to(dtype),
        targets=targets,
        topk_ids=ids,
        topk_logprobs=top.values.to(dtype),
        tail_logprobs=log_mass_outside(log_p, top.indices).to(dtype),  # 1 − Σ top.values: CONFIDENT rows keep those
        extra_ids=extra,
        extra_logprobs=log_p_tau.gather(-1, extra).to(dtype),
        teacher_logits=teacher_logits,
    )


def run(fn, b: dict, **kw) -> tuple:
    """fn's LossOutput and the gradients of its loss w.r.t. hidden and weight; kw overrides b's teacher tensors."""
    h, w = b["hidden"].clone().requires_grad_(), b["weight"].clone().requires_grad_()
    teacher = {key: b[key] for key in TEACHER_KEYS}
    out = fn(h, w, b["targets"], **{**teacher, **kw})
    out.loss.backward()
    return out, h.grad, w.grad


def unmasked_mean(per_position: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return per_position[targets != IGNORE_INDEX].mean()


# ---------------------------------------------------------------------------------------------
# chunked == naive


@pytest.mark.parametrize(("kd", "tail"), list(itertools.product(KD_KINDS, TAILS)))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_chunked_equals_naive_for_loss_and_gradients(kd: str, tail: str, temperature: float, alpha: float) -> None:
    b = make(temperature=temperature)
    kw = dict(alpha=alpha, kd=kd, tail=tail, temperature=temperature, beta=0.3)
    if refused(kd, tail, temperature, alpha):
        for fn in (distill_loss, naive_distill_loss):
            with pytest.raises(ValueError, match=bucket_refusal(temperature)):
                run(fn, b, **kw)
        return
    for tail_logprobs in (b["tail_logprobs"], None):  # the cached exact tail, and the one derived from the top-k
        a, ha, wa = run(distill_loss, b, chunk_size=8, tail_logprobs=tail_logprobs, **kw)  # 8 does not divide 37
        n, hn, wn = run(naive_distill_loss, b, tail_logprobs=tail_logprobs, **kw)
        assert a.num_tokens == n.num_tokens == N - len(MASKED)
        for got, want in ((a.loss, n.loss), (a.ce, n.ce), (a.kd, n.kd), (ha, hn), (wa, wn)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
        assert (a.kd > 0) == (alpha < 1)
        assert hn[MASKED].abs().max() == 0  # masked positions get no gradient
        assert torch.isfinite(ha).all() and ha[CONFIDENT].abs().max() > 0


def test_without_autograd_the_chunks_skip_recomputation_and_agree() -> None:
    b = make()
    with torch.no_grad():
        a = distill_loss(b["hidden"], b["weight"], b["targets"], b["topk_ids"], b["topk_logprobs"], chunk_size=8)
        n = naive_distill_loss(b["hidden"], b["weight"], b["targets"], b["topk_ids"], b["topk_logprobs"])
    torch.testing.assert_close(a.loss, n.loss, atol=1e-6, rtol=0)


def test_bias_is_part_of_the_logits_and_gets_its_gradient() -> None:
    b = make()
    bias = torch.randn(V, generator=torch.Generator().manual_seed(3))
    grads = []
    for fn in (distill_loss, naive_distill_loss):
        bb = bias.clone().requires_grad_()
        out, *_ = run(fn, b, alpha=0.5, bias=bb, chunk_size=8)
        grads.append(bb.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)
    ce = distill_loss(b["hidden"], b["weight"], b["targets"], alpha=1.0, bias=bias).loss
    ref = F.cross_entropy(b["hidden"] @ b["weight"].T + bias, b["targets"], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(ce, ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# full-vocabulary references: with k = V the partitions are the whole distribution


def exact_kd(kd: str, teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N,) forward / reverse KL or JSD(β=0.3) between full softmaxes at temperature τ, from the definitions."""
    log_p = tempered(teacher_logits, temperature)
    log_q = torch.log_softmax(student_logits / temperature, -1)
    p, q = log_p.exp(), log_q.exp()
    if kd == "forward":
        return (p * (log_p - log_q)).sum(-1)
    if kd == "reverse":
        return (q * (log_q - log_p)).sum(-1)
    m = 0.3 * p + 0.7 * q
    return 0.3 * (p * (log_p - m.log())).sum(-1) + 0.7 * (q * (log_q - m.log())).sum(-1)


@pytest.mark.parametrize(("kd", "tail"), list(itertools.product(("forward", "reverse", "jsd"), TAILS)))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_vocabulary_top_k_gives_the_exact_divergence(kd: str, tail: str, temperature: float) -> None:
    """With k = V the bucket tail is empty (given as −inf, or derived) and renorm renormalises a whole
    distribution: both are the exact divergence at τ = 1, renorm at τ = 2 too, and bucket at τ = 2 is refused.
    Sampled KD equals the forward KL in expectation only: see the unbiasedness test below."""
    b = make(k=V, dtype=torch.float64)
    assert torch.isneginf(b["tail_logprobs"]).all()
    kw = dict(alpha=0.0, kd=kd, tail=tail, temperature=temperature, beta=0.3, chunk_size=16)
    if refused(kd, tail, temperature):
        with pytest.raises(ValueError, match=bucket_refusal(temperature)):
            run(distill_loss, b, **kw)
        return
    student = b["hidden"].clone().requires_grad_()
    exact = unmasked_mean(exact_kd(kd, b["teacher_logits"], student @ b["weight"].T, temperature), b["targets"])
    exact.backward()
    for tail_logprobs in (b["tail_logprobs"], None):
        out, grad, _ = run(distill_loss, b, tail_logprobs=tail_logprobs, **kw)
        torch.testing.assert_close(out.kd, exact.detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(grad, temperature**2 * student.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_kd_is_an_unbiased_estimate_of_the_full_vocabulary_kl(temperature: float) -> None:
    # `draws` independent sets of M tokens for each of n positions, stacked as rows (draw d, position i at row
    # d·n + i): one call logs the mean of the per-draw estimates and gives every draw's own gradient
    n, draws = 4, 2000
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(n, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    teacher_logits = torch.randn(n, V, generator=g, dtype=torch.float64) * 2
    log_p = tempered(teacher_logits, temperature).repeat(draws, 1)  # (draws·n, V)
    ids = torch.multinomial(log_p.exp(), M, replacement=True, generator=g)  # (draws·n, M)
    h = hidden.repeat(draws, 1).requires_grad_()
    targets = torch.zeros(draws * n, dtype=torch.long)
    out = distill_loss(
        h,
        weight,
        targets,
        extra_ids=ids,
        extra_logprobs=log_p.gather(-1, ids),
        alpha=0.0,
        kd="sampled",
        temperature=temperature,
    )
    out.loss.backward()
    student = hidden.clone().requires_grad_()
    exact = exact_kd("forward", teacher_logits, student @ weight.T, temperature).mean()
    exact.backward()

    log_q = torch.log_softmax(hidden @ weight.T / temperature, -1).repeat(draws, 1)  # (draws·n, V)
    per_draw = (log_p.gather(-1, ids) - log_q.gather(-1, ids)).mean(-1).view(draws, n).mean(-1)  # (draws,)
    torch.testing.assert_close(out.kd, per_draw.mean(), atol=1e-10, rtol=0)  # the logged kd is that estimator
    se, kl = float(per_draw.std()) / math.sqrt(draws), exact.item()
    assert se < 0.01 * kl  # fine enough to tell the KL from, say, the cross-entropy (larger by H(p_τ))
    assert abs(float(out.kd) - kl) < 4 * se

    # row r's gradient is τ²/(draws·n) ∇ est_r, so one draw's d kd / d hidden (n, H) is its block times draws / τ²
    per_draw_grad = h.grad.view(draws, n, H) * draws / temperature**2
    grad_se = per_draw_grad.std(0) / math.sqrt(draws)  # (n, H)
    assert grad_se.max() < 0.05 * student.grad.abs().max()
    assert ((per_draw_grad.mean(0) - student.grad).abs() < 5 * grad_se).all()  # 5: n·H = 64 comparisons


def test_ce_is_cross_entropy_and_alpha_one_needs_no_teacher() -> None:
    b = make()
    for kd in KD_KINDS:
        out = distill_loss(b["hidden"], b["weight"], b["targets"], alpha=1.0, kd=kd, chunk_size=8)
        ref = F.cross_entropy(b["hidden"] @ b["weight"].T, b["targets"], ignore_index=IGNORE_INDEX)
        torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=0)
        assert out.kd == 0 and out.ce == out.loss


# ---------------------------------------------------------------------------------------------
# hand-checkable cases


def test_a_four_token_example_computed_by_hand() -> None:
    # V = 4, teacher p: token 2 with 0.5, token 0 with 0.3, token 1 with 0.15, token 3 with 0.05. Its top-2 is
    # {2, 0}, so the tail holds 0.2. Student logits z; sampled KD draws tokens 2, 2, 1.
    p, z, draws = [0.3, 0.15, 0.5, 0.05], [0.0, 1.0, 2.0, -1.0], [2, 2, 1]

    def softmax(logits: list[float]) -> list[float]:
        return [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]

    def kl(a: list[float], c: list[float]) -> float:
        return sum(x * math.log(x / y) for x, y in zip(a, c, strict=True))

    def jsd(a: list[float], c: list[float], beta: float = 0.3) -> float:
        m = [beta * x + (1 - beta) * y for x, y in zip(a, c, strict=True)]
        return beta * kl(a, m) + (1 - beta) * kl(c, m)

    def on_top2(d: list[float]) -> list[float]:
        return [d[2] / (d[2] + d[0]), d[0] / (d[2] + d[0])]

    def sampled(a: list[float], c: list[float]) -> float:
        return sum(math.log(a[x] / c[x]) for x in draws) / len(draws)

    q = softmax(z)
    p_b, q_b = [0.5, 0.3, 0.2], [q[2], q[0], q[1] + q[3]]  # buckets: token 2, token 0, the rest
    p2, q2 = softmax([math.log(x) / 2 for x in p]), softmax([v / 2 for v in z])  # τ = 2, full vocabulary
    expected = {
        ("forward", "bucket", 1.0): kl(p_b, q_b),
        ("forward", "renorm", 1.0): kl(on_top2(p), on_top2(q)),
        ("reverse", "bucket", 1.0): kl(q_b, p_b),
        ("reverse", "renorm", 1.0): kl(on_top2(q), on_top2(p)),
        ("jsd", "bucket", 1.0): jsd(p_b, q_b),
        ("jsd", "renorm", 1.0): jsd(on_top2(p), on_top2(q)),
        # renorm tempers exactly: the top-2 logprobs over 2, renormalised, is the tempered teacher given {2, 0}
        ("forward", "renorm", 2.0): kl(on_top2(p2), on_top2(q2)),
        ("reverse", "renorm", 2.0): kl(on_top2(q2), on_top2(p2)),
        ("sampled", "bucket", 1.0): sampled(p, q),
        ("sampled", "bucket", 2.0): sampled(p2, q2),
    }
    hidden, weight = torch.tensor([z], dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    ids, lps = torch.tensor([[2, 0]]), torch.tensor([[0.5, 0.3]], dtype=torch.float64).log()
    extra_ids = torch.tensor([draws])
    for (kd, tail, temperature), want in expected.items():
        p_tau = p if temperature == 1.0 else p2
        extra_lps = torch.tensor([[math.log(p_tau[x]) for x in draws]], dtype=torch.float64)
        for tail_lp in (torch.tensor([math.log(0.2)], dtype=torch.float64), None):  # given, and derived: the same
            out = distill_loss(
                hidden,
                weight,
                torch.tensor([1]),
                ids,
                lps,
                tail_lp,
                extra_ids,
                extra_lps,
                alpha=0.0,
                kd=kd,
                tail=tail,
                temperature=temperature,
                beta=0.3,
            )
            assert float(out.kd) == pytest.approx(want, abs=1e-12), (kd, tail, temperature)
            assert float(out.loss) == pytest.approx(temperature**2 * want, abs=1e-12)
    assert float(out.ce) == pytest.approx(-math.log(q[1]), abs=1e-12)


@pytest.mark.parametrize(("kd", "tail"), list(itertools.product(KD_KINDS, TAILS)))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_and_its_gradient_vanish_when_the_student_is_the_teacher(kd: str, tail: str, temperature: float) -> None:
    # the student's logits are the teacher's full logprobs (weight = identity), so p = q on every bucket, and
    # log p_τ(x) = log q_τ(x) at every drawn token: sampled KD is 0 for each draw, its gradient only on average
    kw = dict(alpha=0.0, kd=kd, tail=tail, temperature=temperature, beta=0.3)
    for seed in range(3):  # three teachers, and three draws of the sampled tokens
        b = make(seed, k=V, dtype=torch.float64, temperature=temperature)
        log_p = torch.log_softmax(b["teacher_logits"], -1)
        student = dict(b, hidden=log_p, weight=torch.eye(V, dtype=torch.float64))
        if refused(kd, tail, temperature):
            with pytest.raises(ValueError, match=bucket_refusal(temperature)):
                run(distill_loss, student, **kw)
            continue
        full, grad, _ = run(distill_loss, student, **kw)
        assert abs(float(full.kd)) < 1e-10 and (kd == "sampled" or grad.abs().max() < 1e-10)
        # the same in fp32 with only the top-k cached, its tail exact or derived from it: the tails agree too
        top = torch.topk(log_p, K, dim=-1)
        teacher = (top.indices, top.values.float(), log_mass_outside(log_p, top.indices).float())
        for tail_logprobs in (teacher[2], None):
            out = distill_loss(
                log_p.float(),
                torch.eye(V),
                b["targets"],
                *teacher[:2],
                tail_logprobs,
                b["extra_ids"],
                b["extra_logprobs"].float(),
                **kw,
            )
            assert abs(float(out.kd)) <= 1e-6


def test_a_confident_student_sees_the_teachers_tail_exactly_in_fp32() -> None:
    # student: 6 tokens at logit 30, so 7e-13 of its mass is outside them; teacher: the same 6 hold 0.7, the tail 0.3.
    # Computed from the 6 gathered values alone, fp32 cannot tell 7e-13 from 0: the tail term would be clamped
    # and give no gradient. Rows this confident are recomputed over the complement.
    z = torch.zeros(1, V)
    z[0, :K] = 30.0
    ids, lps = torch.arange(K).unsqueeze(0), torch.full((1, K), math.log(0.7 / K))
    log_q = torch.log_softmax(z.double(), -1)
    tail_q = log_q[0, K:].exp().sum()
    exact = 0.7 * (math.log(0.7 / K) - float(log_q[0, 0])) + 0.3 * (math.log(0.3) - float(tail_q.log()))
    h = z.clone().requires_grad_()
    out = distill_loss(h, torch.eye(V), torch.tensor([0]), ids, lps, alpha=0.0)
    out.loss.backward()
    assert float(out.kd) == pytest.approx(exact, rel=1e-5)
    # d KL / d z_j summed over the tokens outside S is Q_out − r = −0.3: the push towards the teacher's tail
    assert float(h.grad[0, K:].sum()) == pytest.approx(-0.3, abs=1e-4)


@pytest.mark.parametrize("kd", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("eps", [1e-7, 1e-5])
def test_a_near_certain_teacher_with_its_exact_tail_absorbs_a_quantised_top1(kd: str, eps: float) -> None:
    """A teacher with 1 − ε on its top-1 and ε spread over the other tokens, k = 20 of V = 1000, its exact tail
    (a little under ε) given as tail_logprobs, fp32 inputs: as its own student it gets kd ≈ 0.

    A coarse quantiser moves the top-1 logprob by up to ±0.005 (p = 0.995 for a true 0.9999). With the exact tail
    given, the k+1 buckets are normalised together and absorb that: kd stays ≈ 0. Deriving the tail from the
    quantised top-k instead (tail_logprobs=None) would turn the error into tail mass: +0.005 pushes Σ_S p past 1
    and empties the tail; −0.005 makes a tail of 0.005, some 500 (ε = 1e-5) to 50,000 (ε = 1e-7) times the real one.
    """
    vocab, k, top1 = 1000, 20, torch.tensor([0, 417, 999])
    rows = torch.arange(len(top1))
    others = torch.randn(len(top1), vocab, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    others[rows, top1] = -math.inf
    log_p = torch.log_softmax(others, -1) + math.log(eps)  # (3, V): the rest of ε, unevenly
    log_p[rows, top1] = math.log1p(-eps)
    top = torch.topk(log_p, k, dim=-1)
    tail = log_mass_outside(log_p, top.indices).float()  # (3,)

    def kd_for(topk_logprobs: torch.Tensor) -> float:
        out = distill_loss(log_p.float(), torch.eye(vocab), top1, top.indices, topk_logprobs, tail, alpha=0.0, kd=kd)
        return float(out.kd)

    assert abs(kd_for(top.values.float())) <= 1e-6
    for shift in (0.005, -0.005):
        quantised = top.values.float().clone()
        quantised[:, 0] += shift  # column 0: topk sorts, so the top-1
        assert abs(kd_for(quantised)) <= 1e-4, shift


def test_reverse_kl_with_an_overfull_teacher_top_k_is_bounded() -> None:
    # quantised logprobs can sum past 1: the tail is then empty, the buckets renormalised, and reverse KL
    # charges the student's tail mass against the 1e-8 floor instead of infinity
    ids, lps = torch.tensor([[0, 1]]), torch.tensor([[0.6, 0.41]], dtype=torch.float64).log()
    q_s, q_tail = 1 / V, 1 - 2 / V  # uniform student
    expected = (
        q_s * math.log(q_s / (0.6 / 1.01)) + q_s * math.log(q_s / (0.41 / 1.01)) + q_tail * math.log(q_tail / 1e-8)
    )
    out = distill_loss(
        torch.zeros(1, V, dtype=torch.float64),
        torch.eye(V, dtype=torch.float64),
        torch.tensor([0]),
        ids,
        lps,
        alpha=0.0,
        kd="reverse",
    )
    assert float(out.kd) == pytest.approx(expected, rel=1e-9)
    forward = distill_loss(torch.zeros(1, V), torch.eye(V), torch.tensor([0]), ids, lps, alpha=0.0)
    assert float(forward.kd) == pytest.approx(
        math.log(V) + (0.6 * math.log(0.6) + 0.41 * math.log(0.41)) / 1.01 - math.log(1.01), rel=1e-5
    )


def test_all_masked_and_empty_batches_give_zero_loss_and_zero_gradient() -> None:
    b = make()
    for n in (N, 0):
        batch = dict(b, hidden=b["hidden"][:n], targets=torch.full((n,), IGNORE_INDEX))
        batch.update({key: b[key][:n] for key in TEACHER_KEYS})
        for fn in (distill_loss, naive_distill_loss):
            out, gh, gw = run(fn, batch, alpha=0.5)
            assert out.num_tokens == 0 and float(out.loss.detach()) == 0.0 and float(out.kd) == 0.0
            assert gw is not None and gw.abs().max() == 0 and torch.isfinite(gw).all()
            assert gh.numel() == 0 or gh.abs().max() == 0


@pytest.mark.parametrize(("kd", "tail"), [("forward", "renorm"), ("sampled", "bucket")])
def test_temperature_scales_kd_by_tau_squared_in_the_total(kd: str, tail: str) -> None:
    b = make(temperature=2.0)
    out, *_ = run(distill_loss, b, alpha=0.25, kd=kd, tail=tail, temperature=2.0)
    torch.testing.assert_close(out.loss, 0.25 * out.ce + 0.75 * 4.0 * out.kd, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# dtypes: low-precision inputs, fp32 loss


def test_bf16_and_mixed_inputs_give_an_fp32_loss_close_to_fp32() -> None:
    b = make()
    h16, w16 = b["hidden"].bfloat16(), b["weight"].bfloat16()
    ref = naive_distill_loss(h16.float(), w16.float(), b["targets"], b["topk_ids"], b["topk_logprobs"])
    for h, w in ((h16, w16), (h16, w16.float()), (h16.float(), w16)):
        out = distill_loss(h, w, b["targets"], b["topk_ids"], b["topk_logprobs"], chunk_size=8)
        assert out.loss.dtype == torch.float32
        torch.testing.assert_close(out.loss, ref.loss, atol=0.05, rtol=0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = distill_loss(b["hidden"], b["weight"], b["targets"], b["topk_ids"], b["topk_logprobs"], chunk_size=8)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss, atol=0.05, rtol=0.01)


def test_a_bf16_teacher_top_k_keeps_its_real_tail_when_the_tail_is_derived() -> None:
    # bf16 keeps 8 significant bits: a tail thresholded at k rounding errors (20 · 2^-7 = 0.16) would be emptied here
    g = torch.Generator().manual_seed(5)
    p = torch.softmax(torch.randn(8, 20, generator=g, dtype=torch.float64), -1) * 0.9  # (8, 20): the tail is 0.1
    lps = p.log().bfloat16()
    last = teacher_partition(lps, "bucket", 1.0)[:, -1]  # (8,) log of the tail bucket
    rounding = (lps.double().exp() - p).abs().sum(-1)  # (8,) how far bf16 moved Σ_S p, hence the derived tail
    assert last.dtype == torch.float32 and rounding.max() < 0.01
    assert torch.isfinite(last).all()
    assert ((last.double().exp() - 0.1).abs() <= rounding + 1e-6).all()


def test_teacher_partition_normalises_a_given_tail_with_the_top_k_and_refuses_to_temper_it() -> None:
    lps, tail = torch.tensor([[0.55, 0.3]], dtype=torch.float64).log(), torch.tensor([0.25], dtype=torch.float64).log()
    got = teacher_partition(lps, "bucket", 1.0, tail).exp()  # Σ = 1.1: a quantiser's overshoot, shared out
    torch.testing.assert_close(got, torch.tensor([[0.5, 0.3 / 1.1, 0.25 / 1.1]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"tail='bucket' is exact only at temperature 1; use tail='renorm'"):
        teacher_partition(lps, "bucket", 2.0, tail)


# ---------------------------------------------------------------------------------------------
# argument checks


BAD_ARGUMENTS = [
    (dict(alpha=2.0), r"alpha must be in \[0, 1\], got 2.0"),
    (dict(temperature=0.0), r"temperature must be > 0, got 0.0"),
    (dict(kd="kl"), r"kd must be one of forward, reverse, jsd, sampled, got 'kl'"),
    (dict(tail="drop"), r"tail must be one of bucket, renorm, got 'drop'"),
    (dict(kd="jsd", beta=1.0), r"kd='jsd' needs 0 < beta < 1"),
    (dict(chunk_size=0), r"chunk_size must be a positive number"),
    (dict(topk_ids=None), r"needs the teacher's topk_ids and topk_logprobs"),
    (
        dict(temperature=2.0),
        r"tail='bucket' at temperature 2.0 would need the teacher's tempered tail mass, which the top-k cannot give; "
        r"use tail='renorm'",
    ),
    (dict(kd="sampled", extra_ids=None), r"kd='sampled' with alpha < 1 needs extra_ids and extra_logprobs"),
    (dict(kd="sampled", extra_logprobs=None), r"kd='sampled' with alpha < 1 needs extra_ids and extra_logprobs"),
    (
        dict(kd="sampled", extra_logprobs=torch.zeros(N, M + 1)),
        r"extra_logprobs \(torch.float32 \(37, 5\)\) must be floating-point logprobs of the shape of extra_ids "
        r"\(37, 4\)",
    ),
    (dict(kd="sampled", extra_ids=torch.full((N, M), V)), r"extra_ids hold ids in \[50, 50\] but the output layer"),
    (dict(tail_logprobs=torch.zeros(N - 1)), r"tail_logprobs must be \(N=37,\) log masses, got torch.float32 \(36,\)"),
    (
        dict(tail_logprobs=torch.zeros(N, dtype=torch.long)),
        r"tail_logprobs must be \(N=37,\) log masses, got torch.int64",
    ),
    (
        dict(kd="sampled", extra_logprobs=torch.zeros(N, M, dtype=torch.long)),
        r"extra_logprobs \(torch.int64 \(37, 4\)\) must be floating-point",
    ),
    (dict(topk_logprobs=torch.zeros(N, K + 1)), r"topk_ids \(37, 6\) and topk_logprobs \(37, 7\) must both be"),
    (dict(targets=torch.zeros(N - 1, dtype=torch.long)), r"targets must be integer ids of shape \(N=37,\)"),
    (dict(weight=torch.zeros(V, H + 1)), r"must be \(N, H\) and \(V, H\) with the same H"),
    (dict(topk_ids=torch.full((N, K), V)), r"topk_ids hold ids in \[50, 50\] but the output layer has V=50 rows"),
    (dict(targets=torch.full((N,), -3)), r"targets hold ids in \[-3, -3\]"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ARGUMENTS)
def test_bad_arguments_are_sentences(change: dict, message: str) -> None:
    b = make()
    kw = dict(hidden=b["hidden"], weight=b["weight"], targets=b["targets"], alpha=0.5)
    kw.update({key: b[key] for key in TEACHER_KEYS})
    for fn in (distill_loss, naive_distill_loss):
        with pytest.raises(ValueError, match=message):
            fn(**{**kw, **change})


def test_every_problem_is_reported_at_once_and_alpha_one_ignores_teacher_shapes() -> None:
    b = make()
    with pytest.raises(ValueError, match=r"alpha must be.*; temperature must be.*; kd must be"):
        distill_loss(b["hidden"], b["weight"], b["targets"], alpha=-1.0, temperature=-1.0, kd="x")
    distill_loss(b["hidden"], b["weight"], b["targets"], topk_ids=torch.zeros(3, 3), alpha=1.0)  # unused: fine


def test_auto_chunk_size_bounds_loss_memory_by_vocabulary() -> None:
    assert auto_chunk_size(32_768) == 512 and auto_chunk_size(151_936) == 64
    assert all(auto_chunk_size(v) * v <= CHUNK_ELEMENTS for v in (1000, 32_768, 151_936, 262_144))
    b = make()
    auto = distill_loss(b["hidden"], b["weight"], b["targets"], b["topk_ids"], b["topk_logprobs"])  # one chunk
    torch.testing.assert_close(
        auto.loss, naive_distill_loss(b["hidden"], b["weight"], b["targets"], b["topk_ids"], b["topk_logprobs"]).loss
    )


# ---------------------------------------------------------------------------------------------
# memory


def test_measure_peak_memory_sees_a_known_allocation() -> None:
    def allocate_then_free() -> None:
        big = torch.ones(4 * 2**20)  # 16 MiB, written so it is real
        small = torch.ones(2**20)  # 4 MiB while big is alive: peak 20 MiB
        del big, small
        torch.ones(2**20)  # 4 MiB after both are freed: does not raise the peak

    peak = measure_peak_memory(allocate_then_free)
    assert 20 * 2**20 <= peak < 21 * 2**20


@pytest.mark.slow
def test_chunked_loss_peak_memory_is_a_fraction_of_the_naive_one() -> None:
    n, vocab, h, k = 4096, 32_768, 64, 20
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = (torch.randn(vocab, h, generator=g) * 0.05).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    ids = torch.randint(0, vocab, (n, k), generator=g)
    lps = torch.log_softmax(torch.randn(n, k + 1, generator=g), -1)[:, :k].contiguous()

    def forward_backward(fn) -> None:
        fn(hidden, weight, targets, ids, lps).loss.backward()

    peaks = {}
    for fn in (distill_loss, naive_distill_loss):
        hidden.grad = weight.grad = None  # freed outside the measurement: the profiler never saw them allocated
        peaks[fn.__name__] = measure_peak_memory(functools.partial(forward_backward, fn))
    logits_bytes = n * vocab * 4
    chunk_bytes = auto_chunk_size(vocab) * vocab * 4
    assert peaks["naive_distill_loss"] >= logits_bytes  # it holds at least the full (N, V) logits
    assert peaks["distill_loss"] < peaks["naive_distill_loss"] / 2
    assert peaks["distill_loss"] < 8 * chunk_bytes  # a few (chunk, V) buffers, whatever N is
