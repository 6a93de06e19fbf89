"""Full-vocabulary divergence between a student and a teacher at the same positions, in chunks.

On-policy distillation's `--loss full` (GKD with λ = 1, Agarwal et al. 2024, exact): at every position the
student sampled, the `--kd` divergence between the teacher's and the student's whole next-token
distributions — no top-k, no tail bucket — from both models' final hidden states. This needs a teacher in
the trainer's process (its hidden states); a cached or served teacher is known only through its top-k
(`distill.losses.chunked`).

Memory: per chunk of positions, both sides' (chunk, V) logits are made, reduced to one value per position
and dropped; backward recomputes the chunk (activation checkpointing), so no (N, V) logits of either side
exist at once. The teacher's side carries no gradient: its hidden states come in detached.

Vocabularies padded past the tokenizer (Qwen2.5 rounds 151,665 tokens up to 151,936 output rows) may differ
between the two models: the first `vocab` rows are compared one by one and each side's remaining rows form
one bucket, so nothing is dropped and models with equal rows compare exactly.

Exactness: a student identical to its teacher gives the same log-probabilities on both sides, and every
kind of `divergence` is then exactly 0 (reverse KL takes no teacher floor here: every teacher probability
is exact, none is an unknown tail).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from distill.losses.chunked import auto_chunk_size
from distill.losses.kd import _log_mixture, divergence

FULL_KD_KINDS = ("forward", "reverse", "jsd")


def full_vocab_kd(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    *,
    kd: str = "reverse",
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab: int | None = None,
    chunk_size: int | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N,) the divergence between teacher and student next-token distributions at each of N positions.

    student_hidden: (N, H_s) the student's final hidden states (with grad); student_weight: (V_s, H_s) its
    output layer, student_bias (V_s,) or None. teacher_hidden: (N, H_t), teacher_weight: (V_t, H_t),
    teacher_bias (V_t,) or None, at the same positions (no grad needed). kd: one of FULL_KD_KINDS; beta: the
    JSD weight; temperature τ: both sides' logits divided by τ. vocab: rows compared one by one (None: the
    smaller of V_s and V_t); the rest of each side is one bucket. chunk_size: positions per chunk (None:
    `auto_chunk_size` of the larger vocabulary). Returns fp32 (fp64 inputs stay fp64); ValueError for bad
    arguments.
    """
    n = student_hidden.shape[0]
    v_s, v_t = student_weight.shape[0], teacher_weight.shape[0]
    vocab = min(v_s, v_t) if vocab is None else vocab
    problems = []
    if kd not in FULL_KD_KINDS:
        problems.append(f"kd must be one of {', '.join(FULL_KD_KINDS)}, got {kd!r}")
    if teacher_hidden.shape[0] != n:
        problems.append(f"student_hidden has {n} positions and teacher_hidden {teacher_hidden.shape[0]}")
    if not 0 < vocab <= min(v_s, v_t):
        problems.append(f"vocab must be in [1, {min(v_s, v_t)}] (both output layers' rows), got {vocab}")
    if not temperature > 0 or (kd == "jsd" and not 0 < beta < 1):
        problems.append(f"temperature must be > 0 and jsd's beta in (0, 1), got {temperature}, {beta}")
    if problems:
        raise ValueError("; ".join(problems))
    size = chunk_size or auto_chunk_size(max(v_s, v_t))
    recompute = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (student_hidden, student_weight, student_bias)
    )
    teacher_hidden = teacher_hidden.detach()
    out = []
    for start in range(0, n, size):
        rows = slice(start, start + size)
        args = (student_hidden[rows], student_weight, student_bias, teacher_hidden[rows], teacher_weight,
                teacher_bias, kd, beta, temperature, vocab)  # fmt: skip
        out.append(checkpoint(_chunk, *args, use_reentrant=False) if recompute else _chunk(*args))
    if not out:
        return student_hidden.new_zeros(0, dtype=torch.float32) + student_hidden.sum() * 0.0
    return torch.cat(out)


def _chunk(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    student_bias: torch.Tensor | None,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    teacher_bias: torch.Tensor | None,
    kd: str,
    beta: float,
    temperature: float,
    vocab: int,
) -> torch.Tensor:
    logits = F.linear(student_hidden, student_weight, student_bias)  # (c, V_s): memory hot spot, one chunk
    with torch.no_grad():
        teacher_logits = F.linear(teacher_hidden, teacher_weight, teacher_bias)  # (c, V_t)
        wide = torch.promote_types(_upcast(logits).dtype, _upcast(teacher_logits).dtype)
        log_p = _log_buckets(torch.log_softmax(teacher_logits.to(wide) / temperature, -1), vocab)  # (c, B)
    return _BucketDivergence.apply(logits, log_p, kd, beta, temperature, vocab)


class _BucketDivergence(torch.autograd.Function):
    """(c,) divergence(log_p, student buckets) from student logits (c, V), with the gradient written out.

    Autograd's gradient of Σ p log p − Σ p log q is q·Σp − p, which rounding leaves at ~1e-10 for a student
    equal to its teacher (Σp is 1 only up to rounding), and Adam turns that into a step. Here the analytic
    forms are used, each exactly 0 when the two sides' buckets are equal: with G_b = ∂F/∂Q_b up to a constant,
    ∂F/∂z_j = (q_j/τ)(G_{b(j)} − Σ_b Q_b G_b) — reverse G = log Q − log P, jsd G = (1 − β) log(Q/M) — and
    forward (q_j − P_{b(j)} q_j/Q_{b(j)})/τ, which is q_j − p_j for a token of its own.
    """

    @staticmethod
    def forward(ctx, logits, log_p, kd, beta, temperature, vocab):  # noqa: ANN001, ANN205 - autograd's signature
        log_all = torch.log_softmax(_upcast(logits).to(log_p.dtype) / temperature, -1)  # (c, V)
        log_q = _log_buckets(log_all, vocab)  # (c, B)
        ctx.save_for_backward(log_all, log_q, log_p)
        ctx.settings = (kd, beta, temperature, vocab, logits.dtype)
        return divergence(log_p, log_q, kd, beta, None)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        log_all, log_q, log_p = ctx.saved_tensors
        kd, beta, temperature, vocab, dtype = ctx.settings
        q = log_all.exp()  # (c, V)
        has_q = log_q > -torch.inf  # (c, B): buckets with student mass (the others have no q_j to scale)
        if kd == "forward":
            # P_b·q_j/Q_b, with q_j/Q_b = exp(log q_j − log Q_b): exactly 1 for a token of its own
            ratio = torch.where(q > 0, (log_all - _spread(log_q, vocab, log_all.shape[-1])).exp(), 0.0)
            grad_z = q - _spread(log_p.exp(), vocab, q.shape[-1]) * ratio
        else:
            if kd == "reverse":
                g = torch.where(has_q, log_q - log_p, 0.0)  # (c, B)
            else:
                g = torch.where(has_q, (1.0 - beta) * (log_q - _log_mixture(log_p, log_q, beta)), 0.0)
            centre = (log_q.exp() * g).sum(-1, keepdim=True)  # (c, 1) Σ_b Q_b G_b
            grad_z = q * (_spread(g, vocab, q.shape[-1]) - centre)
        return (grad[:, None] * grad_z / temperature).to(dtype), None, None, None, None, None


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.dtype == torch.float64 else logits.float()


def _log_buckets(log_probs: torch.Tensor, vocab: int) -> torch.Tensor:
    """(c, V) log-probabilities → (c, vocab + 1): the first `vocab` rows, then the rest as one bucket (−inf when
    there is none)."""
    rest = log_probs[:, vocab:]
    bucket = rest.logsumexp(-1) if rest.shape[-1] else log_probs.new_full((log_probs.shape[0],), -torch.inf)
    return torch.cat([log_probs[:, :vocab], bucket.unsqueeze(-1)], dim=-1)


def _spread(per_bucket: torch.Tensor, vocab: int, width: int) -> torch.Tensor:
    """(c, vocab + 1) → (c, width): each of the first `vocab` columns as it is, the last bucket's value repeated
    over the rest."""
    return torch.cat([per_bucket[:, :vocab], per_bucket[:, vocab:].expand(-1, width - vocab)], dim=-1)
