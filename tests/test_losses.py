"""Losses: chunked equals naive (loss and gradients, every variant), both equal the textbook formulas
(full-vocabulary references and hand-computed cases), and chunking bounds peak memory."""

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
)

N, H, V, K, M = 37, 16, 50, 6, 4
MASKED = [0, 5, 6, 20, 36]
CONFIDENT = [1, 2, 3]  # rows where the student puts < 1e-4 outside the teacher's top-k: the exact-tail path


def make(seed: int = 0, k: int = K, dtype: torch.dtype = torch.float32) -> dict:
    """A batch of N positions: student hidden (N, H) and weight (V, H), targets (N,) with masked rows,
    teacher top-k ids / logprobs (N, k), M teacher samples (N, M), and the full teacher logits (N, V)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    targets = torch.randint(0, V, (N,), generator=g)
    targets[MASKED] = IGNORE_INDEX
    teacher_logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    top = torch.topk(torch.log_softmax(teacher_logits, -1), k, dim=-1)
    ids = top.indices.clone()
    if k < V:  # sharpen some rows and let the teacher's top-k be the student's own top-k there
        hidden[CONFIDENT] *= 12
        ids[CONFIDENT] = torch.topk(hidden[CONFIDENT] @ weight.T, k, dim=-1).indices
    sampled = torch.multinomial(torch.softmax(teacher_logits, -1), M, replacement=True, generator=g)
    return dict(
        hidden=hidden.to(dtype),
        weight=weight.to(dtype),
        targets=targets,
        topk_ids=ids,
        topk_logprobs=top.values.to(dtype),
        sampled_ids=sampled,
        teacher_logits=teacher_logits,
    )


def run(fn, b: dict, **kw) -> tuple:
    """fn's LossOutput and the gradients of its loss w.r.t. hidden and weight."""
    h, w = b["hidden"].clone().requires_grad_(), b["weight"].clone().requires_grad_()
    teacher = {key: b[key] for key in ("topk_ids", "topk_logprobs", "sampled_ids")}
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
    b = make()
    kw = dict(alpha=alpha, kd=kd, tail=tail, temperature=temperature, beta=0.3)
    a, ha, wa = run(distill_loss, b, chunk_size=8, **kw)  # 8 does not divide 37
    n, hn, wn = run(naive_distill_loss, b, **kw)
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
    log_p = torch.log_softmax(torch.log_softmax(teacher_logits, -1) / temperature, -1)
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
    b = make(k=V, dtype=torch.float64)
    out, *_ = run(distill_loss, b, alpha=0.0, kd=kd, tail=tail, temperature=temperature, beta=0.3, chunk_size=16)
    exact = exact_kd(kd, b["teacher_logits"], b["hidden"] @ b["weight"].T, temperature)
    torch.testing.assert_close(out.kd, unmasked_mean(exact, b["targets"]), atol=1e-6, rtol=0)


def test_ce_is_cross_entropy_and_alpha_one_needs_no_teacher() -> None:
    b = make()
    for kd in KD_KINDS:
        out = distill_loss(b["hidden"], b["weight"], b["targets"], alpha=1.0, kd=kd, chunk_size=8)
        ref = F.cross_entropy(b["hidden"] @ b["weight"].T, b["targets"], ignore_index=IGNORE_INDEX)
        torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=0)
        assert out.kd == 0 and out.ce == out.loss


# ---------------------------------------------------------------------------------------------
# hand-checkable cases


def test_a_three_token_example_computed_by_hand() -> None:
    # V = 4, teacher top-2: token 2 with p = 0.5, token 0 with 0.3, so the tail holds 0.2; student logits z
    z = [0.0, 1.0, 2.0, -1.0]
    q = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    p_b, q_b = [0.5, 0.3, 0.2], [q[2], q[0], q[1] + q[3]]  # buckets: token 2, token 0, the rest
    p_r, q_r = [0.5 / 0.8, 0.3 / 0.8], [q[2] / (q[2] + q[0]), q[0] / (q[2] + q[0])]

    def kl(a: list[float], c: list[float]) -> float:
        return sum(x * math.log(x / y) for x, y in zip(a, c, strict=True))

    def jsd(a: list[float], c: list[float], beta: float = 0.3) -> float:
        m = [beta * x + (1 - beta) * y for x, y in zip(a, c, strict=True)]
        return beta * kl(a, m) + (1 - beta) * kl(c, m)

    p_t = [x**0.5 for x in p_b]  # τ = 2: teacher buckets re-tempered, then renormalised
    p_t = [x / sum(p_t) for x in p_t]
    zt = [v / 2 for v in z]
    q2 = [math.exp(v) / sum(math.exp(u) for u in zt) for v in zt]
    expected = {
        ("forward", "bucket", 1.0): kl(p_b, q_b),
        ("forward", "renorm", 1.0): kl(p_r, q_r),
        ("reverse", "bucket", 1.0): kl(q_b, p_b),
        ("reverse", "renorm", 1.0): kl(q_r, p_r),
        ("jsd", "bucket", 1.0): jsd(p_b, q_b),
        ("jsd", "renorm", 1.0): jsd(p_r, q_r),
        ("forward", "bucket", 2.0): kl(p_t, [q2[2], q2[0], q2[1] + q2[3]]),
        ("sampled", "bucket", 1.0): -(math.log(q[2]) * 2 + math.log(q[1])) / 3,  # samples 2, 2, 1
    }
    hidden, weight = torch.tensor([z], dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    ids, lps = torch.tensor([[2, 0]]), torch.tensor([[0.5, 0.3]], dtype=torch.float64).log()
    for (kd, tail, temperature), want in expected.items():
        out = distill_loss(
            hidden,
            weight,
            torch.tensor([1]),
            ids,
            lps,
            torch.tensor([[2, 2, 1]]),
            alpha=0.0,
            kd=kd,
            tail=tail,
            temperature=temperature,
            beta=0.3,
        )
        assert float(out.kd) == pytest.approx(want, abs=1e-12), (kd, tail, temperature)
        assert float(out.loss) == pytest.approx(temperature**2 * want, abs=1e-12)
    assert float(out.ce) == pytest.approx(-math.log(q[1]), abs=1e-12)


@pytest.mark.parametrize(("kd", "tail"), list(itertools.product(("forward", "reverse", "jsd"), TAILS)))
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_and_its_gradient_vanish_when_the_student_is_the_teacher(kd: str, tail: str, temperature: float) -> None:
    # the student's logits are the teacher's full logprobs (weight = identity), so p = q on every bucket
    b = make(k=V, dtype=torch.float64)
    log_p = torch.log_softmax(b["teacher_logits"], -1)
    student = dict(b, hidden=log_p, weight=torch.eye(V, dtype=torch.float64))
    full, grad, _ = run(distill_loss, student, alpha=0.0, kd=kd, tail=tail, temperature=temperature, beta=0.3)
    assert abs(float(full.kd)) < 1e-10 and grad.abs().max() < 1e-10
    top = torch.topk(log_p.float(), K, dim=-1)  # the same in fp32 with only the top-k cached: the tails agree too
    out = distill_loss(log_p.float(), torch.eye(V), b["targets"], top.indices, top.values, alpha=0.0, kd=kd, tail=tail)
    assert abs(float(out.kd)) < 1e-6


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


def test_sampled_kd_estimates_the_cross_entropy_to_the_teacher() -> None:
    b = make(dtype=torch.float64)
    many = torch.multinomial(
        torch.softmax(b["teacher_logits"], -1), 4000, replacement=True, generator=torch.Generator().manual_seed(1)
    )
    out = distill_loss(b["hidden"], b["weight"], b["targets"], sampled_ids=many, alpha=0.0, kd="sampled")
    log_q = torch.log_softmax(b["hidden"] @ b["weight"].T, -1)
    ce = -(torch.softmax(b["teacher_logits"], -1) * log_q).sum(-1)
    assert float(out.kd) == pytest.approx(float(unmasked_mean(ce, b["targets"])), rel=0.02)


def test_all_masked_and_empty_batches_give_zero_loss_and_zero_gradient() -> None:
    b = make()
    for n in (N, 0):
        batch = dict(b, hidden=b["hidden"][:n], targets=torch.full((n,), IGNORE_INDEX))
        batch.update({key: b[key][:n] for key in ("topk_ids", "topk_logprobs", "sampled_ids")})
        for fn in (distill_loss, naive_distill_loss):
            out, gh, gw = run(fn, batch, alpha=0.5)
            assert out.num_tokens == 0 and float(out.loss.detach()) == 0.0 and float(out.kd) == 0.0
            assert gw is not None and gw.abs().max() == 0 and torch.isfinite(gw).all()
            assert gh.numel() == 0 or gh.abs().max() == 0


def test_temperature_scales_kd_by_tau_squared_in_the_total() -> None:
    b = make()
    out, *_ = run(distill_loss, b, alpha=0.25, temperature=2.0)
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
    (dict(kd="sampled", sampled_ids=None), r"kd='sampled' with alpha < 1 needs sampled_ids"),
    (dict(topk_logprobs=torch.zeros(N, K + 1)), r"topk_ids \(37, 6\) and topk_logprobs \(37, 7\) must both be"),
    (dict(targets=torch.zeros(N - 1, dtype=torch.long)), r"targets must be integer ids of shape \(N=37,\)"),
    (dict(weight=torch.zeros(V, H + 1)), r"must be \(N, H\) and \(V, H\) with the same H"),
    (dict(topk_ids=torch.full((N, K), V)), r"topk_ids hold ids in \[50, 50\] but the output layer has V=50 rows"),
    (dict(targets=torch.full((N,), -3)), r"targets hold ids in \[-3, -3\]"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ARGUMENTS)
def test_bad_arguments_are_sentences(change: dict, message: str) -> None:
    b = make()
    kw = dict(
        hidden=b["hidden"],
        weight=b["weight"],
        targets=b["targets"],
        topk_ids=b["topk_ids"],
        topk_logprobs=b["topk_logprobs"],
        sampled_ids=b["sampled_ids"],
        alpha=0.5,
    )
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
