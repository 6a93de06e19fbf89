"""Cross-tokenizer distillation: a teacher's cached top-k taught to a student with another tokenizer.

The two sides share the trace's text, not its tokens: the teacher's ids spell it, the student re-tokenises it.

1. `token_spans`: each token's [start, end) in BYTES of the UTF-8 text. Byte-level BPE (Qwen, Llama 3) splits
   multi-byte characters across tokens ("é" = "Ã" + "©"), and a fast tokenizer's character offsets give each
   piece the whole character, so pieces could not be aligned. Spans are sums of each token's own bytes: exact
   for the ids given, which need not be the canonical encoding of the text (sampled teacher ids often are
   not), so no offset mapping from re-encoding is trusted. Tokenizers whose pieces do not concatenate to
   their decoding (SentencePiece drops the first "▁") fall back to decoding growing prefixes, O(n²).
2. `align_spans`: walk both sides and close a group wherever both end a token at the same byte, as TRL's GOLD
   trainer does: one-to-one, merged (many-to-one, one-to-many, many-to-many), or unmatched (one side empty:
   zero-width tokens at the end). A zero-width token joins the group that follows it.
3. `vocab_map`: teacher id → student id of the token with the same bytes (−1: none): tokens are compared as
   the bytes they add to the text ("Ġ" undone, "▁" decoded), one rule whatever the two conventions; a pair
   is kept only where both vocabularies have the same longer tokens beginning with those bytes (else "next
   token '1'" means "the number 1" to one side and "a number starting with 1" to the other).
4. `project_topk`: at a one-to-one position whose trace tokens are each other's counterparts both models
   predict the next token from the same text, so the teacher's top-k moves onto student ids and the unmapped
   part joins the tail bucket (the same KL on a coarser partition); `distill_loss` then applies unchanged on
   the mapped columns (forward / reverse / jsd, bucket / renorm, chunking: all reused).
5. Merged spans, two choices (`merged`). "span" (the default): the two-outcome divergence on {the span's
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
6. `cross_tokenizer_kd`: (α·CE + (1 − α)·(τ²·KD + xt_weight·MERGED)) summed over the student positions and
   divided by their number (the merged term once per group, at τ = 1). Where the tokenizers agree, every position is
   one-to-one and mapped and the result is `distill_loss`'s own, bit for bit.
   Memory: the mapped positions go through the chunked `distill_loss`; every other row's CE and ULD terms
   are reduced per chunk to its trace token's log q and its k largest, and recomputed in backward, so no
   (N, V) logits are ever held, on either path.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from distill.losses.chunked import IGNORE_INDEX, auto_chunk_size, distill_loss
from distill.losses.kd import divergence, log1mexp

KINDS = ("one_to_one", "many_to_one", "one_to_many", "many_to_many", "unmatched")
XT_KD_KINDS = ("forward", "reverse", "jsd")  # sampled KD draws teacher ids, which need not map: not unbiased here
MERGED_TERMS = ("span", "uld")  # what teaches a merged span (module doc, 5)

Group = tuple[tuple[int, ...], tuple[int, ...]]  # (teacher positions, student positions) covering one text range


@dataclass(frozen=True)
class Alignment:
    """One trace's teacher and student positions grouped by the text range they cover."""

    groups: tuple[Group, ...]  # in text order; every position of both sides in exactly one group
    num_teacher: int  # teacher positions (tokens) in the trace
    num_student: int  # student positions in the trace
    counts: dict[str, int]  # teacher positions per kind of group (KINDS)


def alignment_shares(alignments: Sequence[Alignment]) -> dict[str, float]:
    """Shares of all teacher positions aligned one-to-one, merged and unmatched: they sum to 1 (all 0 if none)."""
    total = {kind: sum(a.counts[kind] for a in alignments) for kind in KINDS}
    n = max(sum(total.values()), 1)
    merged = total["many_to_one"] + total["one_to_many"] + total["many_to_many"]
    return {"one_to_one": total["one_to_one"] / n, "merged": merged / n, "unmatched": total["unmatched"] / n}


# ---------------------------------------------------------------------------------------------
# tokens as bytes, spans, alignment, vocabulary map


@functools.lru_cache(maxsize=8)  # one table per tokenizer object: do not add tokens to a tokenizer after use
def token_bytes(tokenizer: Any) -> tuple[bytes | None, ...]:
    """(len(tokenizer),) the bytes each id adds to decoded text; None where a token has none of its own."""
    added = {i: t.content.encode() for i, t in tokenizer.added_tokens_decoder.items()}
    decoder = json.loads(tokenizer.backend_tokenizer.decoder.__getstate__()) if tokenizer.is_fast else {}
    table: list[bytes | None] = []
    if "ByteLevel" in json.dumps(decoder):  # the token's characters stand for its bytes
        to_byte = _unicode_to_byte()
        for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
            known = tok is not None and set(tok) <= to_byte.keys()
            table.append(added.get(i) or (bytes(to_byte[c] for c in tok) if known else None))
        return tuple(b or None for b in table)
    anchor = tokenizer.encode("a", add_special_tokens=False)  # what a token adds after "a": a leading "▁" is a space
    prefix = _decode(tokenizer, anchor)
    for i in range(len(tokenizer)):
        text = added[i].decode() if i in added else _decode(tokenizer, [*anchor, i])
        piece = text if i in added else text[len(prefix) :] if text.startswith(prefix) else ""
        table.append(piece.encode() if piece and "\ufffd" not in piece else None)  # "\ufffd": part of a character
    return tuple(table)


def token_spans(tokenizer: Any, text: str, ids: Sequence[int]) -> list[tuple[int, int]]:
    """(n,) byte offsets [start, end) of each of `ids` (n,) in text.encode(): contiguous, covering all of it.

    Raises ValueError when the ids do not spell `text` (another tokenizer's ids, or a normalising tokenizer).
    """
    data, table = text.encode(), token_bytes(tokenizer)
    pieces = [table[i] if 0 <= i < len(table) else None for i in ids]
    if all(p is not None for p in pieces) and b"".join(pieces) == data:
        ends = list(itertools.accumulate(len(p) for p in pieces))
    else:  # decode growing prefixes; one that ends inside a character ends before it
        ends = [
            min(len(_decode(tokenizer, ids[: i + 1]).rstrip("\ufffd").encode()), len(data)) for i in range(len(ids))
        ]
        if any(b < a for a, b in itertools.pairwise(ends)) or (ends[-1] if ends else 0) != len(data):
            raise ValueError(
                f"the {len(ids)} token ids do not spell the given text of {len(data)} bytes with this tokenizer "
                f"({type(tokenizer).__name__}); re-tokenise the text that the ids decode to"
            )
    return list(zip([0, *ends[:-1]], ends, strict=True))


def align_spans(teacher_spans: Sequence[tuple[int, int]], student_spans: Sequence[tuple[int, int]]) -> Alignment:
    """Group teacher and student positions whose spans cover the same byte range (see the module docstring).

    teacher_spans (n_t,), student_spans (n_s,): [start, end) pairs, each side contiguous, both covering the
    same range (else ValueError). Returns an Alignment whose groups hold every position of both sides once.
    """
    sides = {"teacher": teacher_spans, "student": student_spans}
    problems = [f"{name} spans are not contiguous [start, end) pairs" for name, spans in sides.items()
                if any(b < a for a, b in spans) or any(x[1] != y[0] for x, y in itertools.pairwise(spans))]  # fmt: skip
    if len({(s[0][0], s[-1][1]) for s in sides.values() if s}) > 1:
        problems.append("teacher and student spans cover different byte ranges: they are not of the same text")
    if problems:
        raise ValueError("; ".join(problems))
    groups, teacher, student, i, j = [], [], [], 0, 0
    while i < len(teacher_spans) or j < len(student_spans):
        t_end = teacher_spans[i][1] if i < len(teacher_spans) else math.inf
        s_end = student_spans[j][1] if j < len(student_spans) else math.inf
        if t_end <= s_end:  # take the token that ends first, both on a tie
            teacher, i = [*teacher, i], i + 1
        if s_end <= t_end:
            student, j = [*student, j], j + 1
        if teacher and student and teacher_spans[teacher[-1]][1] == student_spans[student[-1]][1]:
            groups, teacher, student = [*groups, (tuple(teacher), tuple(student))], [], []
    if teacher or student:
        groups.append((tuple(teacher), tuple(student)))
    counts = dict.fromkeys(KINDS, 0)
    for t, s in groups:
        counts[group_kind(t, s)] += len(t)
    return Alignment(tuple(groups), len(teacher_spans), len(student_spans), counts)


def vocab_map(teacher_tok: Any, student_tok: Any) -> torch.Tensor:
    """(V_teacher,) int64: for each teacher id the student id of the token with the same bytes, −1 if none.

    V_teacher = len(teacher_tok). One-to-one: where one side has several ids of equal bytes, its lowest wins.
    A pair is kept only where both tokenizers extend its bytes alike (`token_extensions`): "the next token is
    '1'" is the event "the text goes on with 1, then not a longer token" on each side, so it is one event
    only if both have the same longer tokens beginning with 1. A student that spells "17" as one token and a
    teacher that spells it "1" "7" do not share the event '1': mapping it would move the teacher's mass for
    every number starting with 1 onto the student's number 1 (measured on the embedded default: README).
    Identical tokenizers map every token to itself.
    """
    t_ext, s_ext = token_extensions(teacher_tok), token_extensions(student_tok)
    student = {b: i for i, b in reversed(list(enumerate(token_bytes(student_tok)))) if b is not None}
    teacher = {
        b: i
        for i, b in reversed(list(enumerate(token_bytes(teacher_tok))))
        if b in student and t_ext.get(b, frozenset()) == s_ext.get(b, frozenset())
    }
    out = torch.full((len(teacher_tok),), -1, dtype=torch.long)
    out[list(teacher.values())] = torch.tensor([student[b] for b in teacher], dtype=torch.long)
    return out


@functools.lru_cache(maxsize=8)  # one table per tokenizer object, as token_bytes
def token_extensions(tokenizer: Any) -> dict[bytes, frozenset[bytes]]:
    """For each proper prefix of a reachable token's bytes, the reachable tokens (as bytes) that extend it.

    Reachable: a regular token whose own text encodes to it alone. A vocabulary may hold merges its
    pre-tokenizer never lets apply (Qwen's splits every digit, so its "12" is never produced); those are not
    tokens the model writes, and would make two tokenizers that split digits alike look different.
    """
    table, special = token_bytes(tokenizer), set(tokenizer.added_tokens_decoder)
    candidates = [(i, b) for i, b in enumerate(table) if b and len(b) > 1 and i not in special]
    texts = [b.decode("utf-8", errors="replace") for _, b in candidates]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out: dict[bytes, set[bytes]] = {}
    for (i, b), ids in zip(candidates, encoded, strict=True):
        if ids == [i]:
            for end in range(1, len(b)):
                out.setdefault(b[:end], set()).add(b)
    return {prefix: frozenset(longer) for prefix, longer in out.items()}


def span_logprobs(alignment: Alignment, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """(n_s,) the teacher's log-probabilities (n_t,) of one trace carried onto the student's positions.

    A group's teacher log-probability (the sum over its teacher positions: the log-probability of its text) is
    shared equally by its student positions, so every group, and the trace, keeps its total: one-to-one
    positions get the teacher's value unchanged (bit for bit), a student token covering several teacher tokens
    their sum. Student positions without teacher positions (zero-width tokens) get 0.
    """
    out = teacher_logprobs.new_zeros(alignment.num_student)
    for t, s in alignment.groups:
        if t and s:
            total = teacher_logprobs[t[0]] if len(t) == 1 else teacher_logprobs[list(t)].sum()
            out[list(s)] = total if len(s) == 1 else total / len(s)
    return out


# ---------------------------------------------------------------------------------------------
# the loss terms


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
    alignments: Sequence[Alignment],
    teacher_ids: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprobs: torch.Tensor | None,
    vmap: torch.Tensor,
    teacher_trace_logprobs: torch.Tensor | None = None,
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
    """KD through `distill_loss` at mapped one-to-one positions, `merged` on every other group, CE everywhere.

    hidden (N_s, H), weight (V_s, H), bias (V_s,) or None: the student at its trace positions, in the order of
    `alignments` (one per trace, trace i's rows after trace i − 1's); targets (N_s,) its trace ids, none masked.
    teacher_ids (N_t,) the teacher's trace ids; topk_ids, topk_logprobs (N_t, k) and tail_logprobs (N_t,) or None
    its cached view; vmap (V_t,) from `vocab_map`; teacher_trace_logprobs (N_t,) the teacher's logprobs of its
    trace tokens for merged groups (the cache's sampled_logprobs, NaN where unknown; None or NaN: the top-k's
    value, or the tail's log mass, an upper bound, for a token outside it). kd: one of XT_KD_KINDS; merged: one of
    MERGED_TERMS; alpha, tail, temperature, beta, chunk_size as in `distill_loss`. Raises ValueError, naming every
    problem, for bad input.
    """
    n_s, n_t = hidden.shape[0], topk_ids.shape[0]
    held = (sum(a.num_student for a in alignments), sum(a.num_teacher for a in alignments))
    problems = []
    if kd not in XT_KD_KINDS:
        problems.append(f"kd must be one of {', '.join(XT_KD_KINDS)} across tokenizers, got {kd!r}")
    if xt_weight < 0:
        problems.append(f"xt_weight must be ≥ 0, got {xt_weight}")
    if merged not in MERGED_TERMS:
        problems.append(f"merged must be one of {', '.join(MERGED_TERMS)}, got {merged!r}")
    if held != (n_s, n_t):
        problems.append(f"the alignments hold {held} (student, teacher) positions but the tensors {(n_s, n_t)}")
    if bool((targets == IGNORE_INDEX).any()):
        problems.append("targets hold IGNORE_INDEX: pass the student's trace positions only")
    if problems:
        raise ValueError("; ".join(problems))
    sid, slp, stail, share = project_topk(topk_ids, topk_logprobs, tail_logprobs, vmap)
    kept = (sid >= 0).sum(-1).tolist()  # (N_t,) mapped columns per teacher row
    pairs, groups, ce_only = _plan(alignments, _map_ids(teacher_ids, vmap).tolist(), targets.tolist(), kept)
    top_mass = topk_logprobs.double().logsumexp(-1).exp()  # (N_t,)
    mapped_mass = float((share.double() * top_mass).sum() / top_mass.sum()) if n_t else 0.0
    settings = dict(alpha=alpha, kd=kd, tail=tail, temperature=temperature, beta=beta, chunk_size=chunk_size)
    sums = [hidden.sum().float() * 0.0] * 4  # loss, ce, kd, merged: zeros connected to the graph
    for k_used in sorted({kept[t] for t, _ in pairs}):  # one distill_loss per number of mapped columns
        t_rows = _index([t for t, _ in pairs if kept[t] == k_used], sid.device)
        s_rows = _index([s for t, s in pairs if kept[t] == k_used], hidden.device)
        out = distill_loss(hidden[s_rows], weight, targets[s_rows], sid[t_rows, :k_used], slp[t_rows, :k_used],
                           stail[t_rows], bias=bias, **settings)  # fmt: skip
        if out.num_tokens == n_s:  # every position one-to-one and mapped: distill_loss's own result, bit for bit
            return CrossTokenizerOutput(out.loss, out.ce, out.kd, torch.zeros_like(out.kd), n_s, mapped_mass)
        sums = [x + y * out.num_tokens for x, y in zip(sums, (out.loss, out.ce, out.kd, 0.0), strict=True)]
    rows = sorted({s for _, group in groups for s in group} | set(ce_only))
    if rows:  # CE at every other student row and the merged term per group, from per-row terms made in chunks
        k = topk_ids.shape[-1] if groups and alpha < 1.0 and merged == "uld" else 0
        picked, top = _row_terms(hidden[rows], weight, bias, targets[rows], k, chunk_size)  # (r,), (r, ≤ k)
        sums[0], sums[1] = sums[0] - alpha * picked.sum(), sums[1] - picked.sum()
        if groups and alpha < 1.0:
            where = {r: i for i, r in enumerate(rows)}
            groups = [(t, tuple(where[s] for s in group)) for t, group in groups]  # student rows → rows of `picked`
            tail_t = _tail(topk_logprobs, tail_logprobs)
            trace = _trace_logprobs(teacher_ids, topk_ids, topk_logprobs, tail_t, teacher_trace_logprobs)
            if merged == "span":
                merged_sum = _span_groups(picked, groups, trace, kd, beta)
            else:
                merged_sum = _uld_groups(top, picked, groups, topk_logprobs, tail_t, trace)
            sums[0], sums[3] = sums[0] + (1.0 - alpha) * xt_weight * merged_sum, sums[3] + merged_sum
    loss, ce, kd_mean, merged_mean = (x / max(n_s, 1) for x in sums)
    return CrossTokenizerOutput(loss, ce.detach(), kd_mean.detach(), merged_mean.detach(), n_s, mapped_mass)


# ---------------------------------------------------------------------------------------------
# helpers


def _plan(
    alignments: Sequence[Alignment], trace_map: list[int], student_ids: list[int], kept: list[int]
) -> tuple[list[tuple[int, int]], list[Group], list[int]]:
    """Which term teaches each row of the concatenated traces: (teacher, student) row pairs for `distill_loss`,
    (teacher rows, student rows) groups for ULD, and the student rows left to CE alone.

    trace_map (N_t,) student id of each teacher trace token; student_ids (N_s,); kept (N_t,) mapped columns.
    """
    pairs, groups, ce_only, t0, s0 = [], [], [], 0, 0
    for a in alignments:
        for t, s in a.groups:
            t, s = tuple(t0 + i for i in t), tuple(s0 + i for i in s)
            if len(t) == len(s) == 1 and trace_map[t[0]] == student_ids[s[0]] and kept[t[0]] > 0:
                pairs.append((t[0], s[0]))
            elif t and s:
                groups.append((t, s))
            else:
                ce_only += s
        t0, s0 = t0 + a.num_teacher, s0 + a.num_student
    return pairs, groups, ce_only


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


def _span_groups(picked: torch.Tensor, groups: list[Group], trace: torch.Tensor, kd: str, beta: float) -> torch.Tensor:
    """() Σ over the groups of the `kd` divergence on {the group's text, anything else} (module doc, 5).

    picked (r,): the student's log q of its trace tokens (rows of the groups' student positions); trace (N_t,)
    fp64 the teacher's log p of its trace tokens. fp64, and log q kept below 0, so that 1 − q exists.
    """
    dev_t, dev_s = trace.device, picked.device
    flat_t = [(g, r) for g, (t, _) in enumerate(groups) for r in t]
    flat_s = [(g, r) for g, (_, s) in enumerate(groups) for r in s]
    log_p = trace.new_zeros(len(groups)).index_add(  # (G,) log p(span text)
        0, _index([g for g, _ in flat_t], dev_t), trace[_index([r for _, r in flat_t], dev_t)]
    )
    log_q = (
        picked.double()
        .new_zeros(len(groups))
        .index_add(  # (G,) log q(span text)
            0, _index([g for g, _ in flat_s], dev_s), picked.double()[_index([r for _, r in flat_s], dev_s)]
        )
    )
    log_p, log_q = log_p.to(dev_s).clamp(max=-1e-12), log_q.clamp(max=-1e-12)
    two = lambda x: torch.stack([x, log1mexp(x)], dim=-1)  # noqa: E731 - (G, 2) {span, rest}
    return divergence(two(log_p), two(log_q), kd, beta).sum().to(picked.dtype)


def _uld_groups(
    top: torch.Tensor,
    picked: torch.Tensor,
    groups: list[Group],
    topk_logprobs: torch.Tensor,
    tail_logprobs: torch.Tensor,
    trace: torch.Tensor,
) -> torch.Tensor:
    """() Σ ULD over the groups, each side's first row scaled by the probability of its later trace tokens.

    top (r, ≤ k) and picked (r,): the student's k largest log-probs and its trace tokens' at the groups' rows;
    topk_logprobs (N_t, k), tail_logprobs (N_t,) fp64, trace (N_t,) fp64 from `_trace_logprobs`.
    """
    dev_t, dev_s = trace.device, top.device
    later_t = [(g, r) for g, (t, _) in enumerate(groups) for r in t[1:]]
    later_s = [(g, r) for g, (_, s) in enumerate(groups) for r in s[1:]]
    chain_t = trace.new_zeros(len(groups)).index_add(  # (G,) log Π p(later teacher trace tokens)
        0, _index([g for g, _ in later_t], dev_t), trace[_index([r for _, r in later_t], dev_t)]
    )
    chain_s = picked.new_zeros(len(groups)).index_add(  # (G,) log Π q(later student trace tokens)
        0, _index([g for g, _ in later_s], dev_s), picked[_index([r for _, r in later_s], dev_s)]
    )
    first_t, first_s = _index([t[0] for t, _ in groups], dev_t), _index([s[0] for _, s in groups], dev_s)
    teacher_top = (topk_logprobs.double()[first_t] + chain_t.unsqueeze(-1)).to(dev_s, top.dtype)  # (G, k)
    teacher_tail = (tail_logprobs[first_t] + chain_t).to(dev_s, top.dtype)  # (G,)
    return uld_rows(top[first_s] + chain_s.unsqueeze(-1), teacher_top, teacher_tail, chain_s).sum()


def _row_terms(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    k: int,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(r,) log q of each row's target and (r, min(k, V)) its k largest log q, from hidden (r, H).

    Chunked as `distill_loss` is: per chunk the (chunk, V) logits are made, reduced and dropped, and backward
    recomputes them, so the rows' (r, V) logits never exist at once.
    """
    size = chunk_size or auto_chunk_size(weight.shape[0])
    recompute = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    picked, top = [], []
    for start in range(0, hidden.shape[0], size):
        args = (hidden[start : start + size], weight, bias, targets[start : start + size], k)
        p, t = checkpoint(_chunk_terms, *args, use_reentrant=False) if recompute else _chunk_terms(*args)
        picked, top = [*picked, p], [*top, t]
    return torch.cat(picked), torch.cat(top)


def _chunk_terms(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    common = torch.promote_types(hidden.dtype, weight.dtype)
    logits = F.linear(hidden.to(common), weight.to(common), None if bias is None else bias.to(common))  # (c, V)
    log_q = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
    picked = log_q.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return picked, log_q.topk(min(k, log_q.shape[-1]), dim=-1).values


def group_kind(teacher: Sequence[int], student: Sequence[int]) -> str:
    """A group's kind (one of KINDS) from its sizes."""
    if not teacher or not student:
        return "unmatched"
    return ("one_to_one", "one_to_many", "many_to_one", "many_to_many")[2 * (len(teacher) > 1) + (len(student) > 1)]


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


def _index(positions: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(positions, dtype=torch.long, device=device)


def _unicode_to_byte() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's): the printable character that stands for each byte, inverted."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {chr(b): b for b in keep} | {chr(256 + n): b for n, b in enumerate(shifted)}


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of ids with special tokens kept and no clean-up, so that prefixes decode to prefixes."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
