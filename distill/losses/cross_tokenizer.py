"""Cross-tokenizer distillation: a teacher's cached top-k taught to a student with another tokenizer.

The teacher's trace tokens and the student's cover the same text; distill.alignment groups them by the bytes they
cover and maps the teacher's vocabulary onto the student's. Here that arrives as tensors only, one
`AlignedTeacher` per micro-batch: the groups as two arrays of bounds over the traces end to end, and the
teacher's rows (trace ids, top-k, tail, trace logprobs).

1. `project_topk`: at a one-to-one position whose trace tokens are each other's counterparts both models
   predict the next token from the same text, so the teacher's top-k moves onto student ids and the unmapped
   part joins the tail bucket (the same KL on a coarser partition): the KD of `distill_loss` on the mapped
   columns (forward / reverse / jsd, bucket / renorm), a row's unmapped columns masked out of it.
2. Merged spans, two choices (`merged`). "span" (the default): the two-outcome divergence on {the span's
   text as the trace has it, anything else}: the teacher's probability of the span's text is the product of
   its trace tokens' probabilities, the student's of its own; the same --kd kind on that coarse partition,
   a lower bound of the full divergence (as the tail bucket is), 0 exactly when the two sides give the span
   the same probability. It is tied to the right text: a student confident in another number pays for it.
   "uld": Universal Logit Distillation (Boizard et al., 2024; TRL's GOLD): L1 between the two sides'
   probabilities sorted in decreasing order, which needs no token correspondence — and so rewards confidence
   in whatever the student's top token is, right or wrong (measured on the embedded default: README). The
   teacher is known only through its top-k and tail, so the sorted vectors are compared on k + 1 buckets
   (the k largest, the rest): a lower bound of the full sorted L1, equal to it when k covers both supports.
   A merged group compares its first positions (the only pair conditioned on the same text), each scaled,
   as in GOLD, by the chain-rule probability of its side's later trace tokens in the group: the trace
   path's mass is then the probability of the group's whole text on either side.
3. `cross_tokenizer_kd`: (α·CE + (1 − α)·(τ²·KD + xt_weight·MERGED)) summed over the student positions and
   divided by their number (the merged term once per group, at τ = 1). Where the tokenizers agree, every position is
   one-to-one and mapped and the result is `distill_loss`'s own, bit for bit (it is `distill_loss`).
   Otherwise one chunked pass over the output layer serves every row — the mapped rows first (their KD), then
   the rest (their trace token's log q and, for ULD, their k largest) — and the merged terms are sums over the
   groups' rows (index_add), with no Python loop over groups or rows. Memory: per chunk the (chunk, V) logits
   are made, reduced and dropped, and backward recomputes them, so no (N, V) logits are ever held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from distill.losses.chunked import IGNORE_INDEX, auto_chunk_size, distill_loss, setting_problems
from distill.losses.kd import divergence, log1mexp, student_partition, teacher_partition

XT_KD_KINDS = ("forward", "reverse", "jsd")  # sampled KD draws teacher ids, which need not map: not unbiased here
MERGED_TERMS = ("span", "uld")  # what teaches a merged span (module doc, 2)


@dataclass
class AlignedTeacher:
    """The teacher's side of a micro-batch's traces, aligned to the student's trace positions (distill.retokenize).

    G groups over the traces end to end, trace i's positions after trace i − 1's on both sides, in text order:
    group g is teacher rows [teacher_bounds[g], teacher_bounds[g + 1]) and student rows [student_bounds[g],
    student_bounds[g + 1]) (`distill.alignment.Alignment.tensors`); every row of both sides is in one group.
    """

    teacher_bounds: torch.Tensor
    """(G + 1,) long, from 0, non-decreasing, ending at N_t"""
    student_bounds: torch.Tensor
    """(G + 1,) long, ending at N_s (the student's loss positions, in the order `targets != IGNORE_INDEX` flattens)"""
    ids: torch.Tensor
    """(N_t,) long: the teacher's trace ids"""
    topk_ids: torch.Tensor
    """(N_t, k) long"""
    topk_logprobs: torch.Tensor
    """(N_t, k) float32 raw logprobs"""
    tail_logprobs: torch.Tensor | None = None
    """(N_t,) float32 log mass outside the top-k, or None: derived from the top-k in fp64"""
    trace_logprobs: torch.Tensor | None = None
    """(N_t,) float32 the teacher's logprob of its trace token for merged groups (the cache's sampled_logprobs, NaN
    where unknown); None or NaN: the top-k's value, or the tail's log mass (an upper bound) for a token outside it"""

    def to(self, device: Any) -> AlignedTeacher:
        return AlignedTeacher(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})


def project_topk(
    topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, tail_logprobs: torch.Tensor | None, vmap: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's top-k on student ids, unmapped mass moved into the tail bucket.

    topk_ids (N, k) teacher ids; topk_logprobs (N, k) raw logprobs; tail_logprobs (N,) log mass outside the
    top-k (None: derived from the top-k in fp64, as `teacher_partition` does); vmap (V_teacher,).
    Returns student_topk_ids (N, k) long, the mapped first in the teacher's order, then −1; student_topk_logprobs
    (N, k), −inf at the −1s; student_tail (N,) log(tail + unmapped mass); mapped_mass (N,) fp32, the share of
    the top-k's mass that mapped. A fully mapped row comes back bit for bit (logaddexp(t, −inf) is t).
    """
    sid = _map_ids(topk_ids, vmap)  # (N, k)
    order = torch.sort((sid < 0).to(torch.uint8), dim=-1, stable=True).indices  # mapped first, order kept
    sid, lp = sid.gather(-1, order), topk_logprobs.gather(-1, order)
    mapped = sid >= 0
    unmapped = torch.where(mapped, -math.inf, lp.double()).logsumexp(-1)  # (N,)
    tail = torch.logaddexp(_tail(topk_logprobs, tail_logprobs), unmapped)  # (N,) fp64
    tail = tail.to(torch.promote_types(lp.dtype, torch.float32))
    share = (torch.where(mapped, lp.double(), -math.inf).logsumexp(-1) - lp.double().logsumexp(-1)).exp()
    return sid, torch.where(mapped, lp, -math.inf), tail, share.nan_to_num(0.0).float()


def uld_rows(
    student_logprobs: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_tail_logprobs: torch.Tensor,
    student_log_total: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sorted-probability L1 on k + 1 buckets per row: (n, V), (n, k), (n,) → (n,) fp32 (fp64 stays fp64).

    student_logprobs: log-masses over the student's whole vocabulary (log_softmax, or that plus a per-row
    constant: a merged group's chain-rule factor), or only its k largest when student_log_total (n,) gives
    the log of the row's total mass (None: the logsumexp of student_logprobs); its tail bucket is its total
    minus its k largest. teacher_topk_logprobs, teacher_tail_logprobs: the teacher's k largest log-masses (any
    order), log of the rest. Σ_i |p_(i) − q_(i)| over the k largest of each side (q zero-padded where V < k)
    + |r_p − r_q|.
    """
    dtype = torch.float64 if student_logprobs.dtype == torch.float64 else torch.float32
    k, log_q = teacher_topk_logprobs.shape[-1], student_logprobs.to(dtype)
    p = teacher_topk_logprobs.to(dtype).exp().sort(dim=-1, descending=True).values  # (n, k)
    q = log_q.topk(min(k, log_q.shape[-1]), dim=-1).values.exp()  # (n, ≤ k), sorted
    log_total = log_q.logsumexp(-1) if student_log_total is None else student_log_total.to(dtype)
    q_tail = (log_total.exp() - q.sum(-1)).clamp(min=0.0)  # (n,)
    return (p - F.pad(q, (0, k - q.shape[-1]))).abs().sum(-1) + (teacher_tail_logprobs.to(dtype).exp() - q_tail).abs()


def uld_loss(
    student_logprobs: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_tail_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """() mean of `uld_rows` over the rows where mask (n,) is True (None: all); 0 with no such row.

    Shapes as in `uld_rows`. Sorted by size, the probabilities need no token correspondence: a student that
    is the teacher with its vocabulary permuted scores 0.
    """
    per_row = uld_rows(student_logprobs, teacher_topk_logprobs, teacher_tail_logprobs)
    mask = torch.ones_like(per_row, dtype=torch.bool) if mask is None else mask.bool()
    return torch.where(mask, per_row, 0.0).sum() / max(int(mask.sum()), 1)


@dataclass
class CrossTokenizerOutput:
    """The loss to backpropagate and its parts: sums over the student positions divided by `num_tokens`."""

    loss: torch.Tensor  # () differentiable: (α·ce_sum + (1 − α)·(τ²·kd_sum + xt_weight·merged_sum)) / num_tokens
    ce: torch.Tensor  # () detached cross-entropy to the student's trace tokens
    kd: torch.Tensor  # () detached KD at the mapped one-to-one positions, before τ²
    merged: torch.Tensor  # () detached span divergence or ULD of the merged groups, before xt_weight
    num_tokens: int  # student positions
    mapped_mass: float  # share of the teacher's top-k mass, over all its positions, that mapped onto student ids


def cross_tokenizer_kd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    teacher: AlignedTeacher,
    vmap: torch.Tensor,
    *,
    alpha: float = 0.5,
    kd: str = "forward",
    tail: str = "bucket",
    temperature: float = 1.0,
    beta: float = 0.5,
    xt_weight: float = 1.0,
    merged: str = "span",
    chunk_size: int | None = None,
    bias: torch.Tensor | None = None,
) -> CrossTokenizerOutput:
    """KD at mapped one-to-one positions (as `distill_loss`), `merged` on every other group, CE everywhere.

    hidden (N_s, H), weight (V_s, H), bias (V_s,) or None: the student at its trace positions, in the order of
    `teacher`'s student rows; targets (N_s,) its trace ids, none masked. teacher: the `AlignedTeacher` of those
    traces (N_t rows); vmap (V_t,) teacher id → student id (−1: none, `distill.alignment.vocab_map`). kd: one of
    XT_KD_KINDS; merged: one of MERGED_TERMS; alpha, tail, temperature, beta, chunk_size as in `distill_loss`.
    Raises ValueError, naming every problem, for bad input.
    """
    teacher_ids, topk_ids, topk_logprobs = teacher.ids, teacher.topk_ids, teacher.topk_logprobs
    tail_logprobs, teacher_trace_logprobs = teacher.tail_logprobs, teacher.trace_logprobs
    n_s, n_t, vocab = hidden.shape[0], topk_ids.shape[0], weight.shape[0]
    held = (int(teacher.student_bounds[-1]), int(teacher.teacher_bounds[-1]))  # (student, teacher) rows grouped
    problems = setting_problems(alpha, kd if kd in XT_KD_KINDS else "forward", tail, temperature, beta, chunk_size)
    if kd not in XT_KD_KINDS:
        problems.append(f"kd must be one of {', '.join(XT_KD_KINDS)} across tokenizers, got {kd!r}")
    if xt_weight < 0:
        problems.append(f"xt_weight must be ≥ 0, got {xt_weight}")
    if merged not in MERGED_TERMS:
        problems.append(f"merged must be one of {', '.join(MERGED_TERMS)}, got {merged!r}")
    if held != (n_s, n_t):
        problems.append(f"the alignment holds {held} (student, teacher) positions but the tensors {(n_s, n_t)}")
    if bool((targets == IGNORE_INDEX).any()):
        problems.append("targets hold IGNORE_INDEX: pass the student's trace positions only")
    elif n_s and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        problems.append(f"targets hold ids outside [0, {vocab}): the student's output layer has V={vocab} rows")
    if len(vmap) and int(vmap.max()) >= vocab:
        problems.append(
            f"the vocabulary map holds student ids up to {int(vmap.max())}, past the output layer's {vocab}"
        )
    if problems:
        raise ValueError("; ".join(problems))
    sid, slp, stail, share = project_topk(topk_ids, topk_logprobs, tail_logprobs, vmap)
    kept = (sid >= 0).sum(-1)  # (N_t,) mapped columns per teacher row
    plan = _plan(teacher, _map_ids(teacher_ids, vmap), targets, kept)
    top_mass = topk_logprobs.double().logsumexp(-1).exp()  # (N_t,)
    mapped_mass = float((share.double() * top_mass).sum() / top_mass.sum()) if n_t else 0.0
    settings = dict(alpha=alpha, kd=kd, tail=tail, temperature=temperature, beta=beta)
    pair_t = plan.pair_teacher
    if len(pair_t) == n_s and n_s:  # every row a mapped pair: distill_loss itself (bit for bit where nothing differs)
        k_used = int(kept[pair_t].max())
        if bool((kept[pair_t] == k_used).all()):  # the student rows are the pairs', in order
            out = distill_loss(hidden, weight, targets, sid[pair_t, :k_used], slp[pair_t, :k_used], stail[pair_t],
                               chunk_size=chunk_size, bias=bias, **settings)  # fmt: skip
            return CrossTokenizerOutput(out.loss, out.ce, out.kd, torch.zeros_like(out.kd), n_s, mapped_mass)
    k_top = topk_ids.shape[-1] if alpha < 1.0 and merged == "uld" and bool(plan.merged.any()) else 0
    picked, kd_sum, top = _row_terms(hidden, weight, bias, targets, plan, (sid, slp, stail), k_top, chunk_size,
                                     **settings)  # fmt: skip
    ce_sum, merged_sum = -picked.sum(), picked.sum() * 0.0
    if alpha < 1.0 and bool(plan.merged.any()):
        tail_t = _tail(topk_logprobs, tail_logprobs)
        trace = _trace_logprobs(teacher_ids, topk_ids, topk_logprobs, tail_t, teacher_trace_logprobs)
        if merged == "span":
            merged_sum = _span_groups(picked, plan, trace, kd, beta)
        else:
            merged_sum = _uld_groups(top, picked, plan, topk_logprobs, tail_t, trace)
    loss = alpha * ce_sum + (1.0 - alpha) * (temperature**2 * kd_sum + xt_weight * merged_sum)
    ce_mean, kd_mean, merged_mean = (x.detach() / max(n_s, 1) for x in (ce_sum, kd_sum, merged_sum))
    return CrossTokenizerOutput(loss / max(n_s, 1), ce_mean, kd_mean, merged_mean, n_s, mapped_mass)


# ---------------------------------------------------------------------------------------------
# helpers


@dataclass
class _Plan:
    """Which term teaches each group and row of the concatenated traces (G groups, N_t / N_s positions)."""

    teacher_size: torch.Tensor  # (G,) long teacher positions per group
    student_size: torch.Tensor  # (G,) long
    teacher_group: torch.Tensor  # (N_t,) long the group of each teacher position
    student_group: torch.Tensor  # (N_s,) long
    teacher_first: torch.Tensor  # (G,) long first teacher position of each group (its end where it has none)
    student_first: torch.Tensor  # (G,) long
    merged: torch.Tensor  # (G,) bool groups the merged term teaches: both sides non-empty, not a mapped pair
    pair_teacher: torch.Tensor  # (P,) long teacher rows of the mapped one-to-one pairs, in text order
    order: torch.Tensor  # (N_s,) long student rows, the pairs' first (in the order of pair_teacher), then the rest
    place: torch.Tensor  # (N_s,) long where each student row is in `order`


def _plan(teacher: AlignedTeacher, trace_map: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor) -> _Plan:
    """Groups and rows sorted by the term that teaches them: mapped pairs (one teacher and one student token that
    are each other's counterparts, with a mapped top-k column) for the KD, other groups of both sides for the
    merged term, student rows without a teacher position for CE alone. trace_map (N_t,) the student id of each
    teacher trace token (−1: none), targets (N_s,), kept (N_t,) the mapped columns of each teacher row."""
    device = targets.device
    t_bounds, s_bounds = teacher.teacher_bounds.to(device), teacher.student_bounds.to(device)
    t_size, s_size, t_first, s_first = t_bounds.diff(), s_bounds.diff(), t_bounds[:-1], s_bounds[:-1]
    groups = torch.arange(len(t_size), device=device)
    t_group, s_group = groups.repeat_interleave(t_size), groups.repeat_interleave(s_size)
    pair = (t_size == 1) & (s_size == 1)
    if len(trace_map) and len(targets):
        t, s = t_first.clamp(max=len(trace_map) - 1), s_first.clamp(max=len(targets) - 1)
        pair &= (trace_map.to(device)[t] == targets[s]) & (kept.to(device)[t] > 0)
    pair_rows = s_first[pair]
    others = (~pair[s_group]).nonzero().squeeze(-1)
    order = torch.cat([pair_rows, others])
    place = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=device))
    merged = (t_size > 0) & (s_size > 0) & ~pair
    return _Plan(t_size, s_size, t_group, s_group, t_first, s_first, merged, t_first[pair], order, place)


def _row_terms(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    plan: _Plan,
    projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    k_top: int,
    chunk_size: int | None,
    **settings: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunked pass over every student row, the mapped pairs first: (N_s,) log q of each row's trace token at
    τ = 1 (in row order), () Σ KD over the pairs, and (N_s − P, min(k_top, V)) the k_top largest log q of the other
    rows (in `plan.order`). projected: `project_topk`'s student ids, logprobs and tail (N_t, k), (N_t, k), (N_t,).

    Per chunk the (chunk, V) logits are made, reduced and dropped, and backward recomputes them (as `distill_loss`),
    so the rows' (N_s, V) logits never exist at once.
    """
    size = chunk_size or auto_chunk_size(weight.shape[0])
    recompute = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    hidden, targets = hidden[plan.order], targets[plan.order]
    n_pairs = len(plan.pair_teacher)
    if settings["alpha"] < 1.0 and n_pairs:
        sid, slp, stail = (x[plan.pair_teacher] for x in projected)
        valid = sid >= 0
        sid = torch.where(valid, sid, sid[:, :1])  # project_topk puts mapped ids first: column 0 is valid
    else:
        sid = slp = stail = valid = None
    picked, kd_sum, top = [], hidden.sum().float() * 0.0, []
    for start in range(0, hidden.shape[0], size):
        pairs = slice(start, min(start + size, n_pairs))  # the chunk's pair rows
        teacher = None if sid is None or start >= n_pairs else (sid[pairs], slp[pairs], stail[pairs], valid[pairs])
        args = (hidden[start : start + size], weight, bias, targets[start : start + size], teacher, k_top)
        p, k_part, t = (checkpoint(_chunk_terms, *args, use_reentrant=False, **settings) if recompute
                        else _chunk_terms(*args, **settings))  # fmt: skip
        picked, kd_sum, top = [*picked, p], kd_sum + k_part, [*top, t]
    if not picked:
        return hidden.sum().float().reshape(1)[:0] * 0.0, kd_sum, hidden.new_zeros(0, 0).float()
    return torch.cat(picked)[plan.place], kd_sum, torch.cat(top)


def _chunk_terms(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None,
    k_top: int,
    *,
    alpha: float,
    kd: str,
    tail: str,
    temperature: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of `_row_terms`: hidden (c, H), targets (c,); teacher: the (p, k) ids (unmapped columns repeat a
    mapped id), (p, k) logprobs (−inf there), (p,) tail and (p, k) valid mask of its first p rows, the pairs, or
    None. Returns (c,) log q(target), () Σ KD over the p pairs, (c − p, k_top) the other rows' k_top largest log q."""
    common = torch.promote_types(hidden.dtype, weight.dtype)
    logits = F.linear(hidden.to(common), weight.to(common), None if bias is None else bias.to(common))  # (c, V)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    lse = torch.logsumexp(logits, dim=-1)  # (c,)
    picked = logits.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1) - lse
    p, kd_sum = 0, picked.new_zeros(())
    if teacher is not None:  # the KD of `distill_loss` on the mapped columns of each pair row
        ids, lp, row_tail, valid = teacher
        p = ids.shape[0]
        lse_t = lse[:p] if temperature == 1.0 else torch.logsumexp(logits[:p] / temperature, dim=-1)
        log_p = teacher_partition(lp, tail, temperature, row_tail)
        log_q = student_partition(logits[:p], lse_t, ids, tail, temperature, valid)
        kd_sum = divergence(log_p, log_q, kd, beta).sum()
    rest = logits[p:]  # (c − p, V)
    top = rest.topk(min(k_top, rest.shape[-1]), dim=-1).values - lse[p:].unsqueeze(-1)
    return picked, kd_sum, top


def _trace_logprobs(
    teacher_ids: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprobs: torch.Tensor,
    sampled: torch.Tensor | None,
) -> torch.Tensor:
    """(N_t,) fp64 the teacher's log p of each trace token: `sampled` where known, else the top-k's value, else the
    tail's log mass (an upper bound). teacher_ids (N_t,), topk_* (N_t, k), tail_logprobs (N_t,) fp64."""
    listed = topk_ids.long() == teacher_ids.long().unsqueeze(-1)  # (N_t, k)
    trace = torch.where(
        listed.any(-1), torch.where(listed, topk_logprobs.double(), -math.inf).logsumexp(-1), tail_logprobs
    )
    return trace if sampled is None else torch.where(sampled.isfinite(), sampled.double(), trace)


def _span_groups(picked: torch.Tensor, plan: _Plan, trace: torch.Tensor, kd: str, beta: float) -> torch.Tensor:
    """() Σ over the merged groups of the `kd` divergence on {the group's text, anything else} (module doc, 5).

    picked (N_s,): the student's log q of its trace tokens; trace (N_t,) fp64 the teacher's log p of its trace
    tokens. fp64, and log q kept below 0, so that 1 − q exists.
    """
    groups = len(plan.teacher_size)
    log_p = trace.new_zeros(groups).index_add(0, plan.teacher_group.to(trace.device), trace)  # (G,) log p(text)
    log_q = picked.double().new_zeros(groups).index_add(0, plan.student_group, picked.double())  # (G,) log q(text)
    log_p = log_p.to(picked.device)[plan.merged].clamp(max=-1e-12)
    log_q = log_q[plan.merged].clamp(max=-1e-12)
    two = lambda x: torch.stack([x, log1mexp(x)], dim=-1)  # noqa: E731 - (G, 2) {span, rest}
    return divergence(two(log_p), two(log_q), kd, beta).sum().to(picked.dtype)


def _uld_groups(
    top: torch.Tensor,
    picked: torch.Tensor,
    plan: _Plan,
    topk_logprobs: torch.Tensor,
    tail_logprobs: torch.Tensor,
    trace: torch.Tensor,
) -> torch.Tensor:
    """() Σ ULD over the merged groups, each side's first row scaled by the probability of its later trace tokens.

    top (N_s − P, ≤ k): the student's k largest log-probs of the rows after the pairs in `plan.order`; picked
    (N_s,) its trace tokens' log q; topk_logprobs (N_t, k), tail_logprobs (N_t,) fp64, trace (N_t,) fp64 from
    `_trace_logprobs`.
    """
    groups, dev = len(plan.teacher_size), top.device
    t_group, t_rows = plan.teacher_group.to(trace.device), torch.arange(len(trace), device=trace.device)
    later_t = t_rows != plan.teacher_first.to(trace.device)[t_group]  # (N_t,) not its group's first
    later_s = torch.arange(len(picked), device=dev) != plan.student_first[plan.student_group]
    chain_t = trace.new_zeros(groups).index_add(0, t_group[later_t], trace[later_t])  # (G,) log Π p(later tokens)
    chain_s = picked.new_zeros(groups).index_add(0, plan.student_group[later_s], picked[later_s])  # (G,)
    merged = plan.merged.nonzero().squeeze(-1)
    first_t = plan.teacher_first[merged].to(trace.device)
    first_s = plan.place[plan.student_first[merged]] - len(plan.pair_teacher)  # rows of `top`
    teacher_top = (topk_logprobs.double()[first_t] + chain_t[merged].unsqueeze(-1)).to(dev, top.dtype)  # (M, k)
    teacher_tail = (tail_logprobs[first_t] + chain_t[merged]).to(dev, top.dtype)  # (M,)
    student = chain_s[merged]
    return uld_rows(top[first_s] + student.unsqueeze(-1), teacher_top, teacher_tail, student).sum()


def _tail(topk_logprobs: torch.Tensor, tail_logprobs: torch.Tensor | None) -> torch.Tensor:
    """(N,) fp64 log mass outside the top-k (N, k): the one given, or derived as `teacher_partition` does."""
    if tail_logprobs is not None:
        return tail_logprobs.double()
    log_mass = torch.logsumexp(topk_logprobs.double(), dim=-1)
    return torch.where(log_mass < 0, log1mexp(log_mass.clamp(max=-1e-300)), -math.inf)


def _map_ids(ids: torch.Tensor, vmap: torch.Tensor) -> torch.Tensor:
    """vmap applied to ids of any shape; −1 for ids beyond it (a teacher embedding padded past its tokenizer)."""
    ids, vmap = ids.long(), vmap.to(ids.device)
    return torch.where(ids < vmap.shape[0], vmap[ids.clamp(max=vmap.shape[0] - 1)], -1)
