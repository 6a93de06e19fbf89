"""Cross-tokenizer distillation: a teacher's cached top-k taught to a student with another tokenizer.

The two sides share the trace's text, not its tokens: the teacher's ids spell it, the student re-tokenises it.

1. `token_spans`: each token's [start, end) in BYTES of the UTF-8 text. Byte-level BPE (Qwen, Llama 3) splits
   multi-byte characters across tokens ("é" = "Ã" + "©"), and a fast tokenizer's character offsets give each
   piece the whole character, so pieces could not be aligned. Spans are sums of each token's own bytes
   (`token_bytes`): exact for the ids given, which need not be the canonical encoding of the text (sampled
   teacher ids often are not), so no offset mapping from re-encoding is trusted. SentencePiece tokenizers
   (Llama 2, Mistral, Gemma) write "▁" for a space, prepend one to the text and drop it again when decoding, so
   their first token's span starts one byte later; a character outside their vocabulary is written as its UTF-8
   bytes, one `<0xNN>` token each (byte fallback), and those tokens are their byte. Tokenizers whose pieces still
   do not concatenate to their decoding fall back to decoding growing prefixes, O(n²).
2. `align_spans`: walk both sides and close a group wherever both end a token at the same byte, as TRL's GOLD
   trainer does: one-to-one, merged (many-to-one, one-to-many, many-to-many), or unmatched (one side empty:
   zero-width tokens at the end). A zero-width token joins the group that follows it. Groups are consecutive
   runs on both sides, so an `Alignment` is two arrays of group bounds: a few bytes per group, and every
   per-step use of it (cutting at a row's end, concatenating a micro-batch, planning the loss) is array code.
3. `vocab_map`: teacher id → student id of the token with the same bytes (−1: none): tokens are compared as
   the bytes they add to the text ("Ġ" undone, "▁" decoded, `<0xNN>` its byte), one rule whatever the two
   conventions; a pair is kept only where both vocabularies have the same longer tokens beginning with those
   bytes (else "next token '1'" means "the number 1" to one side and "a number starting with 1" to the other).
   Where a vocabulary holds several tokens of the same bytes, the one it writes comes first (a piece before the
   byte token that stands in for it where it is missing), and the two sides' tokens pair in that order: the
   teacher's `k` maps onto the student's `k`, not its `<0x6B>`, and a tokenizer maps onto itself id for id.
4. `project_topk`: at a one-to-one position whose trace tokens are each other's counterparts both models
   predict the next token from the same text, so the teacher's top-k moves onto student ids and the unmapped
   part joins the tail bucket (the same KL on a coarser partition): the KD of `distill_loss` on the mapped
   columns (forward / reverse / jsd, bucket / renorm), a row's unmapped columns masked out of it.
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
   one-to-one and mapped and the result is `distill_loss`'s own, bit for bit (it is `distill_loss`).
   Otherwise one chunked pass over the output layer serves every row — the mapped rows first (their KD), then
   the rest (their trace token's log q and, for ULD, their k largest) — and the merged terms are sums over the
   groups' rows (index_add), with no Python loop over groups or rows. Memory: per chunk the (chunk, V) logits
   are made, reduced and dropped, and backward recomputes them, so no (N, V) logits are ever held.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from distill.losses.chunked import IGNORE_INDEX, auto_chunk_size, distill_loss, setting_problems
from distill.losses.kd import divergence, log1mexp, student_partition, teacher_partition

KINDS = ("one_to_one", "many_to_one", "one_to_many", "many_to_many", "unmatched")
XT_KD_KINDS = ("forward", "reverse", "jsd")  # sampled KD draws teacher ids, which need not map: not unbiased here
MERGED_TERMS = ("span", "uld")  # what teaches a merged span (module doc, 5)
_BY_SIZES = ("one_to_one", "one_to_many", "many_to_one", "many_to_many")  # index 2·(teacher > 1) + (student > 1)
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # a byte-fallback token's name (SentencePiece, `tokenizers`)

Group = tuple[tuple[int, ...], tuple[int, ...]]  # (teacher positions, student positions) covering one text range


@dataclass(frozen=True, eq=False)
class Alignment:
    """Teacher and student positions of one trace (or of several, end to end) grouped by the text they cover.

    Groups are consecutive runs on both sides, in text order: group g is teacher positions
    [teacher_bounds[g], teacher_bounds[g + 1]) and student positions [student_bounds[g], student_bounds[g + 1]).
    Every position of both sides is in exactly one group; one side of a group may be empty (unmatched).
    """

    teacher_bounds: np.ndarray  # (G + 1,) int64, from 0, non-decreasing
    student_bounds: np.ndarray  # (G + 1,) int64, from 0, non-decreasing

    @classmethod
    def from_sizes(cls, teacher_sizes: Sequence[int], student_sizes: Sequence[int]) -> Alignment:
        """From the number of teacher and student positions of each group, (G,) each."""
        bounds = [np.concatenate([[0], np.cumsum(x, dtype=np.int64)]) for x in (teacher_sizes, student_sizes)]
        return cls(bounds[0].astype(np.int64), bounds[1].astype(np.int64))

    @classmethod
    def identity(cls, n: int) -> Alignment:
        """n positions on each side, each its own one-to-one group (one tokenizer on both sides)."""
        return cls(np.arange(n + 1, dtype=np.int64), np.arange(n + 1, dtype=np.int64))

    @classmethod
    def concat(cls, alignments: Sequence[Alignment]) -> Alignment:
        """Traces end to end: trace i's positions after trace i − 1's, on both sides."""
        if len(alignments) == 1:
            return alignments[0]
        empty = [np.zeros(0, np.int64)]
        teacher = np.concatenate([np.diff(a.teacher_bounds) for a in alignments] or empty)
        return cls.from_sizes(teacher, np.concatenate([np.diff(a.student_bounds) for a in alignments] or empty))

    @property
    def num_teacher(self) -> int:
        return int(self.teacher_bounds[-1])

    @property
    def num_student(self) -> int:
        return int(self.student_bounds[-1])

    @property
    def groups(self) -> tuple[Group, ...]:
        """The groups as (teacher positions, student positions) tuples: for reading and tests, not the hot path."""
        t, s = self.teacher_bounds.tolist(), self.student_bounds.tolist()
        return tuple((tuple(range(t[g], t[g + 1])), tuple(range(s[g], s[g + 1]))) for g in range(len(t) - 1))

    @property
    def counts(self) -> dict[str, int]:
        """Teacher positions per kind of group (KINDS)."""
        t, s = np.diff(self.teacher_bounds), np.diff(self.student_bounds)
        kind = np.where((t == 0) | (s == 0), len(_BY_SIZES), 2 * (t > 1) + (s > 1))
        names = (*_BY_SIZES, "unmatched")
        out = dict.fromkeys(KINDS, 0)
        for i, total in enumerate(np.bincount(kind, weights=t, minlength=len(names)).tolist()):
            out[names[i]] = int(total)
        return out

    def cut(self, num_student: int) -> Alignment:
        """The alignment of the first `num_student` student positions: whole groups up to the cut; the student
        positions of a group the cut splits join a last group without teacher positions (CE only)."""
        if num_student >= self.num_student:
            return self
        kept = int(np.searchsorted(self.student_bounds[1:], num_student, side="right"))  # groups ending by the cut
        t, s = self.teacher_bounds[: kept + 1], self.student_bounds[: kept + 1]
        if s[-1] < num_student:  # a split group: its student positions before the cut keep their CE
            t, s = np.append(t, t[-1]), np.append(s, num_student)
        return Alignment(t, s)


def alignment_shares(alignments: Sequence[Alignment]) -> dict[str, float]:
    """Shares of all teacher positions aligned one-to-one, merged and unmatched: they sum to 1 (all 0 if none)."""
    total = dict.fromkeys(KINDS, 0)
    for a in alignments:
        for kind, n in a.counts.items():
            total[kind] += n
    n = max(sum(total.values()), 1)
    merged = total["many_to_one"] + total["one_to_many"] + total["many_to_many"]
    return {"one_to_one": total["one_to_one"] / n, "merged": merged / n, "unmatched": total["unmatched"] / n}


def group_kind(teacher: Sequence[int], student: Sequence[int]) -> str:
    """A group's kind (one of KINDS) from its positions."""
    if not teacher or not student:
        return "unmatched"
    return _BY_SIZES[2 * (len(teacher) > 1) + (len(student) > 1)]


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
    fallback = byte_fallback_ids(tokenizer)
    anchor = tokenizer.encode("a", add_special_tokens=False)  # what a token adds after "a": a leading "▁" is a space
    prefix = _decode(tokenizer, anchor)
    for i in range(len(tokenizer)):
        if i in fallback:  # alone it decodes to "\ufffd" unless it is a whole (ASCII) character
            table.append(fallback[i])
            continue
        text = added[i].decode() if i in added else _decode(tokenizer, [*anchor, i])
        piece = text if i in added else text[len(prefix) :] if text.startswith(prefix) else ""
        table.append(piece.encode() if piece and "\ufffd" not in piece else None)  # "\ufffd": part of a character
    return tuple(table)


@functools.lru_cache(maxsize=8)
def byte_fallback_ids(tokenizer: Any) -> dict[int, bytes]:
    """The `<0xNN>` tokens of a byte-fallback tokenizer (its decoder has ByteFallback) and their byte; {} for others."""
    decoder = tokenizer.backend_tokenizer.decoder.__getstate__() if tokenizer.is_fast else b""
    if b"ByteFallback" not in decoder:
        return {}
    out = {}
    for token, i in tokenizer.get_vocab().items():
        match = BYTE_TOKEN.fullmatch(token)
        if match and i not in tokenizer.added_tokens_decoder:
            out[i] = bytes([int(match.group(1), 16)])
    return out


@functools.lru_cache(maxsize=8)
def prepends_space(tokenizer: Any) -> bool:
    """Whether the tokenizer writes a space ("▁") before the text that decoding drops again (SentencePiece's
    prepend: Llama 2, Mistral, Gemma), found from how it spells "a"."""
    table = token_bytes(tokenizer)
    return b"".join(table[i] or b"" for i in tokenizer.encode("a", add_special_tokens=False)) == b" a"


def token_spans(tokenizer: Any, text: str, ids: Sequence[int]) -> list[tuple[int, int]]:
    """(n,) byte offsets [start, end) of each of `ids` (n,) in text.encode(): contiguous, covering all of it.

    Raises ValueError when the ids do not spell `text` (another tokenizer's ids, or a normalising tokenizer).
    """
    data, table = text.encode(), token_bytes(tokenizer)
    pieces = [table[i] if 0 <= i < len(table) else None for i in ids]
    joined = b"".join(pieces) if all(p is not None for p in pieces) else None
    ends: list[int] | None = None
    if joined is not None and (joined == data or joined == b" " + data and prepends_space(tokenizer)):
        # the space SentencePiece prepends (its first token's "▁") is not in the text: the first span starts after it
        ends = [max(end - (len(joined) - len(data)), 0) for end in itertools.accumulate(len(p) for p in pieces)]
    elif _decode(tokenizer, ids) == text:  # decode growing prefixes; one that ends inside a character ends before it
        ends = [
            min(len(_decode(tokenizer, ids[: i + 1]).rstrip("\ufffd").encode()), len(data)) for i in range(len(ids))
        ]
    if ends is None or any(b < a for a, b in itertools.pairwise(ends)) or (ends[-1] if ends else 0) != len(data):
        raise ValueError(
            f"the {len(ids)} token ids do not spell the given text of {len(data)} bytes with this tokenizer "
            f"({type(tokenizer).__name__}); re-tokenise the text that the ids decode to"
        )
    return list(zip([0, *ends[:-1]], ends, strict=True)) if ends else []


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
    t_sizes, s_sizes, teacher, student, i, j = [], [], 0, 0, 0, 0
    while i < len(teacher_spans) or j < len(student_spans):
        t_end = teacher_spans[i][1] if i < len(teacher_spans) else math.inf
        s_end = student_spans[j][1] if j < len(student_spans) else math.inf
        if t_end <= s_end:  # take the token that ends first, both on a tie
            teacher, i = teacher + 1, i + 1
        if s_end <= t_end:
            student, j = student + 1, j + 1
        if teacher and student and teacher_spans[i - 1][1] == student_spans[j - 1][1]:
            t_sizes, s_sizes, teacher, student = [*t_sizes, teacher], [*s_sizes, student], 0, 0
    if teacher or student:
        t_sizes, s_sizes = [*t_sizes, teacher], [*s_sizes, student]
    return Alignment.from_sizes(t_sizes, s_sizes)


def vocab_map(teacher_tok: Any, student_tok: Any) -> torch.Tensor:
    """(V_teacher,) int64: for each teacher id the student id of the token with the same bytes, −1 if none.

    V_teacher = len(teacher_tok). One-to-one: where a side has several ids of equal bytes they pair in the order
    `_same_bytes` gives (the token the tokenizer writes first), so a tokenizer maps onto itself id for id.
    A pair is kept only where both tokenizers extend its bytes alike (`token_extensions`): "the next token is
    '1'" is the event "the text goes on with 1, then not a longer token" on each side, so it is one event
    only if both have the same longer tokens beginning with 1. A student that spells "17" as one token and a
    teacher that spells it "1" "7" do not share the event '1': mapping it would move the teacher's mass for
    every number starting with 1 onto the student's number 1 (measured on the embedded default: README).
    """
    t_ext, s_ext = token_extensions(teacher_tok), token_extensions(student_tok)
    student = _same_bytes(student_tok)
    teacher, students = [], []
    for b, ids in _same_bytes(teacher_tok).items():
        if b in student and t_ext.get(b, frozenset()) == s_ext.get(b, frozenset()):
            pairs = list(zip(ids, student[b], strict=False))  # the shorter side's tokens all pair
            teacher, students = teacher + [t for t, _ in pairs], students + [s for _, s in pairs]
    out = torch.full((len(teacher_tok),), -1, dtype=torch.long)
    out[torch.tensor(teacher, dtype=torch.long)] = torch.tensor(students, dtype=torch.long)
    return out


def _same_bytes(tokenizer: Any) -> dict[bytes, list[int]]:
    """The ids of each byte string, the one the tokenizer writes first: a piece before the `<0xNN>` token that
    stands in for it only where the vocabulary lacks it (Llama 2's `k` before its `<0x6B>`), then by id."""
    fallback = byte_fallback_ids(tokenizer)
    out: dict[bytes, list[int]] = {}
    for i, b in sorted(enumerate(token_bytes(tokenizer)), key=lambda ib: (ib[0] in fallback, ib[0])):
        if b is not None:
            out.setdefault(b, []).append(i)
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
    t_size, s_size, t_group, s_group = _group_index(alignment, teacher_logprobs.device)
    total = teacher_logprobs.new_zeros(len(t_size)).index_add(0, t_group, teacher_logprobs)  # (G,); 0 + x is x
    share = torch.where(t_size > 0, total / s_size.clamp(min=1), 0.0)  # (G,)
    return share[s_group]


def _group_index(alignment: Alignment, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(G,) teacher and student positions per group and (n_t,), (n_s,) the group of every position, long."""
    t_size = torch.from_numpy(np.diff(alignment.teacher_bounds)).to(device)
    s_size = torch.from_numpy(np.diff(alignment.student_bounds)).to(device)
    groups = torch.arange(len(t_size), device=device)
    return t_size, s_size, groups.repeat_interleave(t_size), groups.repeat_interleave(s_size)


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
    """KD at mapped one-to-one positions (as `distill_loss`), `merged` on every other group, CE everywhere.

    hidden (N_s, H), weight (V_s, H), bias (V_s,) or None: the student at its trace positions, in the order of
    `alignments` (one per trace, trace i's rows after trace i − 1's); targets (N_s,) its trace ids, none masked.
    teacher_ids (N_t,) the teacher's trace ids; topk_ids, topk_logprobs (N_t, k) and tail_logprobs (N_t,) or None
    its cached view; vmap (V_t,) from `vocab_map`; teacher_trace_logprobs (N_t,) the teacher's logprobs of its
    trace tokens for merged groups (the cache's sampled_logprobs, NaN where unknown; None or NaN: the top-k's
    value, or the tail's log mass, an upper bound, for a token outside it). kd: one of XT_KD_KINDS; merged: one of
    MERGED_TERMS; alpha, tail, temperature, beta, chunk_size as in `distill_loss`. Raises ValueError, naming every
    problem, for bad input.
    """
    n_s, n_t, vocab = hidden.shape[0], topk_ids.shape[0], weight.shape[0]
    alignment = Alignment.concat(alignments) if alignments else Alignment.identity(0)
    problems = setting_problems(alpha, kd if kd in XT_KD_KINDS else "forward", tail, temperature, beta, chunk_size)
    if kd not in XT_KD_KINDS:
        problems.append(f"kd must be one of {', '.join(XT_KD_KINDS)} across tokenizers, got {kd!r}")
    if xt_weight < 0:
        problems.append(f"xt_weight must be ≥ 0, got {xt_weight}")
    if merged not in MERGED_TERMS:
        problems.append(f"merged must be one of {', '.join(MERGED_TERMS)}, got {merged!r}")
    if (alignment.num_student, alignment.num_teacher) != (n_s, n_t):
        problems.append(
            f"the alignments hold {(alignment.num_student, alignment.num_teacher)} (student, teacher) positions but "
            f"the tensors {(n_s, n_t)}"
        )
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
    plan = _plan(alignment, _map_ids(teacher_ids, vmap), targets, kept)
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


def _plan(alignment: Alignment, trace_map: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor) -> _Plan:
    """Groups and rows sorted by the term that teaches them: mapped pairs (one teacher and one student token that
    are each other's counterparts, with a mapped top-k column) for the KD, other groups of both sides for the
    merged term, student rows without a teacher position for CE alone. trace_map (N_t,) the student id of each
    teacher trace token (−1: none), targets (N_s,), kept (N_t,) the mapped columns of each teacher row."""
    device = targets.device
    t_size, s_size, t_group, s_group = _group_index(alignment, device)
    t_first = torch.from_numpy(alignment.teacher_bounds[:-1]).to(device)
    s_first = torch.from_numpy(alignment.student_bounds[:-1]).to(device)
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


def _unicode_to_byte() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's): the printable character that stands for each byte, inverted."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {chr(b): b for b in keep} | {chr(256 + n): b for n, b in enumerate(shifted)}


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of ids with special tokens kept and no clean-up, so that prefixes decode to prefixes."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
