"""Teacher and student tokens of one text, aligned by the bytes they cover: the cross-tokenizer path's text side.

The two sides share the trace's text, not its tokens: the teacher's ids spell it, the student re-tokenises it
(distill.retokenize; `distill onpolicy --cross-tokenizer` the other way round). This module turns tokens into byte
spans, spans into groups, and vocabularies into a map; the loss (distill.losses.cross_tokenizer) sees only the
tensors made from them.

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
4. `span_logprobs`: the teacher's log-probabilities carried onto the student's positions, span by span.
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

KINDS = ("one_to_one", "many_to_one", "one_to_many", "many_to_many", "unmatched")
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

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The bounds as (G + 1,) long tensors: the groups as the loss reads them (`AlignedTeacher`)."""
        return torch.from_numpy(self.teacher_bounds).long(), torch.from_numpy(self.student_bounds).long()


def alignment_shares(alignments: Sequence[Alignment]) -> dict[str, float]:
    """Shares of all teacher positions aligned one-to-one, merged and unmatched: they sum to 1 (all 0 if none)."""
    total = dict.fromkeys(KINDS, 0)
    for a in alignments:
        for kind, n in a.counts.items():
            total[kind] += n
    n = max(sum(total.values()), 1)
    merged = total["many_to_one"] + total["one_to_many"] + total["many_to_many"]
    return {"one_to_one": total["one_to_one"] / n, "merged": merged / n, "unmatched": total["unmatched"] / n}


# ---------------------------------------------------------------------------------------------
# tokens as bytes, spans, alignment, vocabulary map, carried log-probabilities


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


def _unicode_to_byte() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's): the printable character that stands for each byte, inverted."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {chr(b): b for b in keep} | {chr(256 + n): b for n, b in enumerate(shifted)}


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of ids with special tokens kept and no clean-up, so that prefixes decode to prefixes."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
