"""The cross-tokenizer loss (distill/losses/cross_tokenizer.py) on alignments of real tokenizers (the bundled
teacher's byte-level BPE, another byte-level BPE, one of Llama 2's layout: tests/tokenizer_cases.py) and on
hand-worked ones. Where the tokenizers agree the loss is `distill_loss` bit for bit, byte-fallback tokenizers
included; projection, ULD and the span term match hand-computed values; rows whose top-k maps only in part get
`distill_loss`'s KD on their mapped columns; chunking changes memory, not the result."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F

from distill.alignment import Alignment, align_spans, token_spans, vocab_map
from distill.losses import distill_loss
from distill.losses.cross_tokenizer import AlignedTeacher, cross_tokenizer_kd, project_topk, uld_loss, uld_rows
from tests.tokenizer_cases import (
    BYTE_FALLBACK_TEXT,
    TRACE_TEXT,
    bundled_tokenizer,
    byte_fallback_tokenizer,
    byte_level_tokenizer,
)

TEXT = TRACE_TEXT

H, K = 16, 8


@pytest.fixture(scope="module")
def teacher_tok():
    return bundled_tokenizer("arith-teacher")


@pytest.fixture(scope="module")
def student_tok():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def llama_tok():
    return byte_fallback_tokenizer()


def encode(tok, text: str = TEXT) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def teacher_view(n: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, K) top-k ids and logprobs of random teacher distributions over `vocab`, and the exact tail (n,)."""
    g = torch.Generator().manual_seed(seed)
    log_p = torch.log_softmax(2.0 * torch.randn(n, vocab, generator=g), dim=-1)
    top = log_p.topk(K, dim=-1)
    return top.indices, top.values, log_p.scatter(-1, top.indices, -math.inf).logsumexp(-1)


def student_model(n: int, vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (n, H) and an output layer (vocab, H) that want gradients."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g).requires_grad_()
    return hidden, (0.5 * torch.randn(vocab, H, generator=g)).requires_grad_()


def aligned(
    alignments: Sequence[Alignment],
    ids: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail: torch.Tensor | None = None,
    trace: torch.Tensor | None = None,
) -> AlignedTeacher:
    """The teacher's side of traces end to end, as the trainer's collate makes it."""
    return AlignedTeacher(*Alignment.concat(alignments).tensors(), ids, topk_ids, topk_logprobs, tail, trace)


# ---------------------------------------------------------------------------------------------
# (a) identical tokenizers: every piece is the identity and the loss is distill_loss's own


def test_identical_tokenizers_project_everything(teacher_tok) -> None:
    topk_ids, topk_lp, tail = teacher_view(40, len(teacher_tok))
    sid, slp, stail, share = project_topk(topk_ids, topk_lp, tail, torch.arange(len(teacher_tok)))
    assert torch.equal(sid, topk_ids) and torch.equal(slp, topk_lp) and torch.equal(stail, tail)
    assert torch.equal(share, torch.ones(40))


@pytest.mark.parametrize(
    ("kd", "tail", "temperature", "given_tail"),
    [
        ("forward", "bucket", 1.0, True),
        ("reverse", "bucket", 1.0, True),
        ("jsd", "bucket", 1.0, True),
        ("forward", "bucket", 1.0, False),
        ("reverse", "renorm", 2.0, True),
        ("jsd", "renorm", 2.0, False),
    ],
)
def test_identical_tokenizers_give_distill_loss_exactly(teacher_tok, kd, tail, temperature, given_tail) -> None:
    ids = encode(teacher_tok)
    spans = token_spans(teacher_tok, TEXT, ids)
    alignment = align_spans(spans, spans)
    targets = torch.tensor(ids * 2)  # two traces, rows of the second after the first's
    topk_ids, topk_lp, exact_tail = teacher_view(len(targets), len(teacher_tok))
    tail_lp = exact_tail if given_tail else None
    settings = dict(alpha=0.3, kd=kd, tail=tail, temperature=temperature, chunk_size=16)
    hidden, weight = student_model(len(targets), len(teacher_tok))
    vmap = torch.arange(len(teacher_tok))
    ours = cross_tokenizer_kd(hidden, weight, targets, aligned([alignment] * 2, targets, topk_ids, topk_lp, tail_lp),
                              vmap, **settings)  # fmt: skip
    (grad_ours,) = torch.autograd.grad(ours.loss, hidden)
    plain = distill_loss(hidden, weight, targets, topk_ids, topk_lp, tail_lp, **settings)
    (grad_plain,) = torch.autograd.grad(plain.loss, hidden)
    assert torch.equal(ours.loss, plain.loss) and torch.equal(ours.ce, plain.ce) and torch.equal(ours.kd, plain.kd)
    assert torch.equal(grad_ours, grad_plain)
    assert ours.merged.item() == 0.0 and ours.mapped_mass == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# (b) alignment against hand-worked examples


# ---------------------------------------------------------------------------------------------
# (c) multi-byte characters, split or not


# ---------------------------------------------------------------------------------------------
# (d) vocabulary map and projection


def test_projection_moves_unmapped_mass_into_the_tail_exactly() -> None:
    vmap = torch.tensor([-1, 3, -1, 0, 5, 2])
    topk_ids = torch.tensor([[0, 1, 2, 3], [1, 3, 4, 5]])
    topk_lp = torch.tensor([[0.4, 0.3, 0.1, 0.1], [0.5, 0.2, 0.2, 0.05]]).log()
    tail = torch.tensor([0.1, 0.05]).log()
    sid, slp, stail, share = project_topk(topk_ids, topk_lp, tail, vmap)
    assert sid.tolist() == [[3, 0, -1, -1], [3, 0, 5, 2]]
    torch.testing.assert_close(slp.exp(), torch.tensor([[0.3, 0.1, 0.0, 0.0], [0.5, 0.2, 0.2, 0.05]]))
    torch.testing.assert_close(stail.exp(), torch.tensor([0.6, 0.05]))
    torch.testing.assert_close(share, torch.tensor([0.4 / 0.9, 1.0]))


def test_projection_onto_a_real_student_keeps_every_row_a_distribution(teacher_tok, student_tok) -> None:
    topk_ids, topk_lp, tail = teacher_view(64, len(teacher_tok), seed=3)
    vmap = vocab_map(teacher_tok, student_tok)
    for given in (tail, None):
        sid, slp, stail, share = project_topk(topk_ids, topk_lp, given, vmap)
        total = slp.double().exp().sum(-1) + stail.double().exp()
        torch.testing.assert_close(total, torch.ones(64, dtype=torch.float64), atol=1e-6, rtol=0)
        assert torch.equal(sid >= 0, slp > -math.inf) and torch.equal(
            sid[sid >= 0], vmap[topk_ids][vmap[topk_ids] >= 0]
        )
        mass = torch.where(vmap[topk_ids] >= 0, topk_lp.exp(), 0.0).sum(-1) / topk_lp.exp().sum(-1)
        torch.testing.assert_close(share, mass)
        assert 0 < share.mean() < 1


# ---------------------------------------------------------------------------------------------
# (e) ULD


def test_uld_matches_a_hand_computed_value() -> None:
    student = torch.tensor([[0.1, 0.6, 0.2, 0.1]]).log()  # sorted: 0.6, 0.2 | tail 0.2
    teacher = torch.tensor([[0.3, 0.5]]).log()  # sorted: 0.5, 0.3 | tail 0.2
    value = uld_loss(student, teacher, torch.tensor([0.2]).log())
    assert value.item() == pytest.approx(0.1 + 0.1 + 0.0, abs=1e-7)


def test_uld_is_zero_for_the_same_distribution_in_any_vocabulary_order() -> None:
    g = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(torch.randn(5, 30, generator=g), -1)
    top = log_p.topk(K, dim=-1)
    tail = log_p.scatter(-1, top.indices, -math.inf).logsumexp(-1)
    permuted = log_p[:, torch.randperm(30, generator=g)]
    assert uld_loss(permuted, top.values, tail).item() == pytest.approx(0.0, abs=1e-6)
    assert uld_loss(torch.log_softmax(torch.randn(5, 30, generator=g), -1), top.values, tail).item() > 0.05


def test_uld_with_the_whole_vocabulary_is_the_sorted_l1_padded_to_a_common_length() -> None:
    g = torch.Generator().manual_seed(1)
    p, q = torch.softmax(torch.randn(4, 5, generator=g), -1), torch.softmax(torch.randn(4, 8, generator=g), -1)
    reference = (F.pad(p.sort(-1, descending=True).values, (0, 3)) - q.sort(-1, descending=True).values).abs().sum(-1)
    ours = uld_rows(q.log(), F.pad(p.log(), (0, 3), value=-math.inf), torch.full((4,), -math.inf))
    torch.testing.assert_close(ours, reference)


def test_uld_with_no_unmasked_row_is_zero_with_a_gradient() -> None:
    student = torch.log_softmax(torch.randn(3, 10), -1).requires_grad_()
    value = uld_loss(student, torch.full((3, 2), -1.0), torch.full((3,), -1.0), mask=torch.zeros(3, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.equal(student.grad, torch.zeros(3, 10))


def test_merged_groups_scale_both_sides_by_their_remaining_trace_tokens() -> None:
    # teacher "ab" | "c" "d"; student "a" "b" | "cd": one group merged on each side
    alignment = align_spans([(0, 2), (2, 3), (3, 4)], [(0, 1), (1, 2), (2, 4)])
    hidden = torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5], [0.7, 0.2, 0.1]]).log()  # weight = I: logits = hidden
    targets, teacher_ids = torch.tensor([0, 2, 0]), torch.tensor([0, 2, 1])
    topk_ids = torch.tensor([[0, 1], [2, 3], [1, 0]])
    topk_lp, tail = torch.tensor([[0.6, 0.3], [0.8, 0.1], [0.5, 0.4]]).log(), torch.full((3,), 0.1).log()
    teacher = aligned([alignment], teacher_ids, topk_ids, topk_lp, tail)
    args = (hidden, torch.eye(3), targets, teacher, torch.full((4,), -1))
    # group 1: student 0.5·[0.5, 0.3, 0.2] vs teacher [0.6, 0.3] + 0.1 → 0.35 + 0.15 + 0
    # group 2: teacher 0.5·([0.8, 0.1] + 0.1) (its "d" has p = 0.5) vs student [0.7, 0.2] + 0.1 → 0.3 + 0.15 + 0.05
    out = cross_tokenizer_kd(*args, alpha=0.0, merged="uld")
    assert out.merged.item() == pytest.approx(1.0 / 3, abs=1e-6) and out.loss.item() == pytest.approx(1.0 / 3, abs=1e-6)
    # the cache's sampled logprob of "d" (0.25) wins over the top-k's
    sampled = dataclasses.replace(teacher, trace_logprobs=torch.tensor([math.nan, math.nan, math.log(0.25)]))
    out = cross_tokenizer_kd(*args[:3], sampled, args[4], alpha=0.0, merged="uld")
    assert out.merged.item() == pytest.approx((0.5 + 0.6 + 0.075 + 0.075) / 3, abs=1e-6)
    # span: the two-outcome KL on {the span's text, the rest}; "ab": p 0.6, q 0.5·0.5; "cd": p 0.8·0.5, q 0.7
    kl = lambda p, q: p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))  # noqa: E731
    out = cross_tokenizer_kd(*args, alpha=0.0, kd="forward")
    assert out.merged.item() == pytest.approx((kl(0.6, 0.25) + kl(0.4, 0.7)) / 3, abs=1e-6)
    out = cross_tokenizer_kd(*args, alpha=0.0, kd="reverse")
    assert out.merged.item() == pytest.approx((kl(0.25, 0.6) + kl(0.7, 0.4)) / 3, abs=1e-6)
    ce = cross_tokenizer_kd(*args, alpha=1.0)
    assert ce.loss.item() == pytest.approx(-(math.log(0.5) + math.log(0.5) + math.log(0.7)) / 3, abs=1e-6)


def test_each_student_row_is_taught_by_kd_uld_or_ce_alone() -> None:
    # two one-to-one groups, then a zero-width student token at the end that no teacher token covers
    alignment = align_spans([(0, 1), (1, 2)], [(0, 1), (1, 2), (2, 2)])
    assert alignment.groups == (((0,), (0,)), ((1,), (1,)), ((), (2,)))
    hidden = torch.tensor([[0.5, 0.3, 0.2], [0.25, 0.25, 0.5], [0.7, 0.2, 0.1]]).log()  # weight = I: logits = hidden
    targets, teacher_ids = torch.tensor([0, 1, 2]), torch.tensor([0, 1])
    topk_ids, topk_lp = torch.tensor([[0, 1], [1, 2]]), torch.tensor([[0.6, 0.3], [0.8, 0.1]]).log()
    teacher = aligned([alignment], teacher_ids, topk_ids, topk_lp, torch.full((2,), 0.1).log())
    # counterparts: KD on both groups, exactly distill_loss's on those rows
    out = cross_tokenizer_kd(hidden, torch.eye(3), targets, teacher, torch.arange(3), alpha=0.0)
    plain = distill_loss(hidden[:2], torch.eye(3), targets[:2], topk_ids, topk_lp, teacher.tail_logprobs, alpha=0.0)
    assert out.merged.item() == 0.0 and out.kd.item() * 3 == pytest.approx(plain.kd.item() * 2, rel=1e-6)
    # the teacher's trace tokens map onto other student ids than the student's trace tokens: ULD, not KD
    out = cross_tokenizer_kd(hidden, torch.eye(3), targets, teacher, torch.tensor([1, 0, 2]), alpha=0.0)
    assert out.kd.item() == 0.0 and out.merged.item() > 0
    # CE covers the student-only row too
    out = cross_tokenizer_kd(hidden, torch.eye(3), targets, teacher, torch.arange(3), alpha=1.0)
    assert out.loss.item() == pytest.approx(-(math.log(0.5) + math.log(0.25) + math.log(0.1)) / 3, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# (f) the whole loss across two tokenizers


def test_loss_across_tokenizers_combines_ce_kd_and_uld(teacher_tok, student_tok) -> None:
    t_ids, s_ids = encode(teacher_tok), encode(student_tok)
    alignment = align_spans(token_spans(teacher_tok, TEXT, t_ids), token_spans(student_tok, TEXT, s_ids))
    alignments = [alignment, alignment]  # two traces, rows of the second after the first's
    targets, teacher_ids = torch.tensor(s_ids * 2), torch.tensor(t_ids * 2)
    topk_ids, topk_lp, tail = teacher_view(2 * len(t_ids), len(teacher_tok), seed=4)
    topk_ids[:, 0] = teacher_ids  # the trace token is the teacher's top-1, as it mostly is
    hidden, weight = student_model(2 * len(s_ids), len(student_tok))
    vmap = vocab_map(teacher_tok, student_tok)
    args = (hidden, weight, targets, aligned(alignments, teacher_ids, topk_ids, topk_lp, tail), vmap)
    with_uld, without = cross_tokenizer_kd(*args, alpha=0.3), cross_tokenizer_kd(*args, alpha=0.3, xt_weight=0.0)
    assert with_uld.kd > 0 and with_uld.merged > 0 and 0 < with_uld.mapped_mass < 1
    assert (with_uld.loss - without.loss).item() == pytest.approx(0.7 * with_uld.merged.item(), rel=1e-5)
    ce = F.cross_entropy(hidden @ weight.T, targets)  # CE covers every student position exactly once
    torch.testing.assert_close(with_uld.ce, ce.detach())
    torch.testing.assert_close(cross_tokenizer_kd(*args, alpha=1.0).loss, ce)
    (grad,) = torch.autograd.grad(with_uld.loss, hidden)
    assert grad.isfinite().all() and (grad.abs().sum(-1) > 0).all()
    with pytest.raises(ValueError, match="kd must be one of forward, reverse, jsd.*xt_weight.*alignment holds"):
        half = aligned(alignments[:1], teacher_ids, topk_ids, topk_lp, tail)
        cross_tokenizer_kd(*args[:3], half, vmap, kd="sampled", xt_weight=-1.0)


def test_empty_alignment_gives_zero() -> None:
    hidden, weight = student_model(0, 10)
    none = torch.zeros(0, dtype=torch.long)
    teacher = aligned([align_spans([], [])], none, torch.zeros(0, K, dtype=torch.long), torch.zeros(0, K))
    out = cross_tokenizer_kd(hidden, weight, none, teacher, torch.arange(10))
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.num_tokens == 0 and torch.equal(hidden.grad, torch.zeros(0, H))


def test_chunked_rows_equal_one_chunk(teacher_tok, student_tok) -> None:
    """The CE and ULD rows computed in chunks of 3 (recomputed in backward) give the loss and gradients of one
    chunk holding all of them: chunking changes memory, not the result."""
    t_ids, s_ids = encode(teacher_tok), encode(student_tok)
    alignment = align_spans(token_spans(teacher_tok, TEXT, t_ids), token_spans(student_tok, TEXT, s_ids))
    topk_ids, topk_lp, tail = teacher_view(len(t_ids), len(teacher_tok), seed=5)
    vmap = vocab_map(teacher_tok, student_tok)
    results = []
    for chunk in (3, 10_000):
        hidden, weight = student_model(len(s_ids), len(student_tok))
        teacher = aligned([alignment], torch.tensor(t_ids), topk_ids, topk_lp, tail)
        out = cross_tokenizer_kd(hidden, weight, torch.tensor(s_ids), teacher, vmap, alpha=0.2, kd="reverse",
                                 chunk_size=chunk)  # fmt: skip
        out.loss.backward()
        results.append((out.loss.detach(), out.merged, hidden.grad, weight.grad))
    assert results[0][1] > 0
    for ours, whole in zip(*results, strict=True):
        torch.testing.assert_close(ours, whole, rtol=1e-5, atol=1e-6)


def test_span_term_is_zero_at_agreement_and_punishes_confidence_in_the_wrong_text() -> None:
    """Merged spans: a student that gives the span the teacher's probability scores 0 whatever it does elsewhere;
    one confident in another text pays more under span than under ULD, which sees only sorted probabilities."""
    alignment = align_spans([(0, 1), (1, 2)], [(0, 2)])  # teacher "a" "b", student "ab"
    teacher_ids, topk_ids = torch.tensor([0, 1]), torch.tensor([[0, 1], [1, 0]])
    topk_lp = torch.tensor([[0.9, 0.05], [0.5, 0.3]]).log()  # p("ab") = 0.9 · 0.5 = 0.45
    tail = torch.tensor([0.05, 0.2]).log()
    vmap = torch.full((2,), -1)
    # the student's "ab" is its id 0: q = 0.45. ULD compares sorted buckets: the teacher's first row scaled by
    # p("b" | "a") = 0.5 is [0.45, 0.025] + tail 0.025, so any student at or above it in every bucket scores
    # exactly 0.5; this one's tail (0.01) is below the teacher's, so ULD gives it 0.53 (a tie would be decided
    # by rounding)
    agree = torch.tensor([[0.45, 0.54, 0.01]]).log()
    wrong = torch.tensor([[0.05, 0.9, 0.05]]).log()  # sure of another text (its id 1): ULD 0.5
    for kd in ("forward", "reverse", "jsd"):
        args = (torch.eye(3), torch.tensor([0]), aligned([alignment], teacher_ids, topk_ids, topk_lp, tail), vmap)
        assert cross_tokenizer_kd(agree, *args, alpha=0.0, kd=kd).merged.item() == pytest.approx(0.0, abs=1e-7)
        span = cross_tokenizer_kd(wrong, *args, alpha=0.0, kd=kd).merged.item()
        uld = cross_tokenizer_kd(wrong, *args, alpha=0.0, kd=kd, merged="uld").merged.item()
        agree_uld = cross_tokenizer_kd(agree, *args, alpha=0.0, kd=kd, merged="uld").merged.item()
        assert span > 0.1 and uld < agree_uld - 0.01  # ULD prefers the confidently wrong student


# ---------------------------------------------------------------------------------------------
# (g) byte-fallback tokenizers (Llama 2 / Mistral / Gemma layout), and rows whose top-k maps in part


@pytest.mark.parametrize(("kd", "tail"), [("forward", "bucket"), ("reverse", "bucket"), ("jsd", "renorm")])
def test_identical_byte_fallback_tokenizers_give_distill_loss_exactly(llama_tok, kd, tail) -> None:
    """The identity invariant for a byte-fallback tokenizer: every id maps to itself (single-character pieces that
    share their bytes with a byte token included) and the loss is distill_loss's own, bit for bit."""
    assert torch.equal(vocab_map(llama_tok, llama_tok), torch.arange(len(llama_tok)))
    ids = encode(llama_tok, BYTE_FALLBACK_TEXT)
    spans = token_spans(llama_tok, BYTE_FALLBACK_TEXT, ids)
    targets = torch.tensor(ids * 2)
    topk_ids, topk_lp, tail_lp = teacher_view(len(targets), len(llama_tok), seed=6)
    topk_ids[:, -1] = torch.where((topk_ids == targets[:, None]).any(-1), topk_ids[:, -1], targets)  # trace in top-k
    settings = dict(alpha=0.3, kd=kd, tail=tail, chunk_size=16)
    hidden, weight = student_model(len(targets), len(llama_tok))
    vmap = vocab_map(llama_tok, llama_tok)
    teacher = aligned([align_spans(spans, spans)] * 2, targets, topk_ids, topk_lp, tail_lp)
    ours = cross_tokenizer_kd(hidden, weight, targets, teacher, vmap, **settings)
    plain = distill_loss(hidden, weight, targets, topk_ids, topk_lp, tail_lp, **settings)
    assert torch.equal(ours.loss, plain.loss) and torch.equal(ours.kd, plain.kd) and ours.merged.item() == 0.0
    assert torch.equal(torch.autograd.grad(ours.loss, hidden)[0], torch.autograd.grad(plain.loss, hidden)[0])


@pytest.mark.parametrize(
    ("kd", "tail", "temperature"),
    [("forward", "bucket", 1.0), ("reverse", "bucket", 1.0), ("jsd", "bucket", 1.0), ("reverse", "renorm", 2.0)],
)
def test_rows_with_unmapped_columns_get_distill_losss_kd_on_their_mapped_columns(kd, tail, temperature) -> None:
    """The one pass over all rows masks a row's unmapped columns out of the KD: each mapped pair's term equals
    `distill_loss` on that row's mapped columns alone, whatever the other rows of its chunk hold."""
    n, vocab = 12, 40
    g = torch.Generator().manual_seed(7)
    vmap = torch.where(torch.rand(vocab, generator=g) < 0.6, torch.randperm(vocab, generator=g), -1)
    topk_ids, topk_lp, tail_lp = teacher_view(n, vocab, seed=8)
    mapped = (vmap >= 0).nonzero().squeeze(-1)
    teacher_ids = mapped[torch.randint(len(mapped), (n,), generator=g)]
    topk_ids[:, 0] = torch.where((topk_ids == teacher_ids[:, None]).any(-1), topk_ids[:, 0], teacher_ids)
    targets = vmap[teacher_ids]  # every row a pair of counterparts but row 4 (student writes another token)
    targets[4] = (targets[4] + 1) % vocab
    alignment = align_spans([(i, i + 1) for i in range(n)], [(i, i + 1) for i in range(n)])
    hidden, weight = student_model(n, vocab, seed=9)
    settings = dict(alpha=0.3, kd=kd, tail=tail, temperature=temperature)
    teacher = aligned([alignment], teacher_ids, topk_ids, topk_lp, tail_lp)
    ours = cross_tokenizer_kd(hidden, weight, targets, teacher, vmap, xt_weight=0.0, chunk_size=5, **settings)
    sid, slp, stail, _ = project_topk(topk_ids, topk_lp, tail_lp, vmap)
    kept = (sid >= 0).sum(-1)
    assert len(set(kept.tolist())) > 2  # rows of several widths
    total = torch.zeros(())
    for i in range(n):
        if i == 4:  # CE alone (α·CE: xt_weight 0 silences its merged term)
            total = total + 0.3 * F.cross_entropy(hidden[i : i + 1] @ weight.T, targets[i : i + 1])
            continue
        k = int(kept[i])
        row = distill_loss(hidden[i : i + 1], weight, targets[i : i + 1], sid[i : i + 1, :k], slp[i : i + 1, :k],
                           stail[i : i + 1], **settings)  # fmt: skip
        total = total + row.loss
    torch.testing.assert_close(ours.loss, total / n, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(*(torch.autograd.grad(x, (hidden, weight)) for x in (ours.loss, total / n)),
                               rtol=1e-4, atol=1e-7)  # fmt: skip
