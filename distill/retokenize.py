"""A teacher cache read by a student of another tokenizer: each record's text re-tokenised and aligned.

`distill train --cross-tokenizer` trains on these instead of the cache's ids (the alignment is distill.alignment,
the loss distill.losses.cross_tokenizer). Choices:
- alignment by text: a record's completion ids decode, special tokens kept, to the trace's text; the
  student's tokenizer re-tokenises that text, and byte spans of both sides group their positions. The
  student's CE is on its own tokens; the teacher's rows stay as cached (top-k, tail, trace logprob);
- the prompt the teacher saw is re-tokenised as text too, so the student learns under the teacher's
  rendering (chat template, instruction, think prefix): evaluate it with the same template;
- where the two tokenizers are the same (fingerprint), the teacher's ids are the student's and every position
  is its own one-to-one group: sampled ids need not be the text's canonical encoding, and re-encoding could
  change them where nothing differs; no text is made, so ids that are not whole characters align too;
- the end of the turn: a completion that ends with the teacher's eos ends with the student's; both are
  zero-width spans after the text, so they form the last one-to-one group, and the vocabulary map sends
  the teacher's eos to the student's (their strings may differ: <|im_end|>, <|eot_id|>). A completion that is
  only the eos trains on that one group;
- text that is not whole UTF-8 characters (a byte-level teacher cut by --max-new-tokens inside an emoji or a CJK
  character, or stray bytes) has no student tokens: the completion is cut back to the last token before the
  first broken character (and its eos dropped), and counted. A record that cannot be aligned at all is left out
  and counted; one record never stops a run;
- done once at set-up (a progress bar); kept, per record, only the student's ids and the alignment's bounds, flat
  (a few int32 per token): the teacher's rows are read from the memory-mapped cache when a step needs them.
  A record cut by --max-length keeps the groups wholly inside the cut; the student positions of a group
  the cut splits keep their CE only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.alignment import KINDS, Alignment, align_spans, token_bytes, token_spans, vocab_map
from distill.cache import Record
from distill.cache.format import topk_tail_logprobs
from distill.data import Batch, collate
from distill.errors import DistillError
from distill.fingerprint import tokenizer_fingerprint
from distill.losses.cross_tokenizer import AlignedTeacher

ONE_TO_ONE_WARNING = 0.5  # below this share of one-to-one teacher positions a run warns: ULD teaches the rest


@dataclass
class AlignedRecord:
    """One cache record as the student reads it, and how its positions meet the teacher's."""

    student: Record
    """the student's prompt and completion ids; no teacher arrays (top-k width 0)"""
    teacher: Record
    """the cache's record: teacher ids, top-k, tail, trace logprobs (its first `alignment.num_teacher` rows count)"""
    alignment: Alignment


@dataclass
class AlignmentReport:
    """What a run's records say about the two tokenizers (kept in the run's manifest)."""

    one_to_one: float
    """share of teacher positions aligned one-to-one"""
    merged: float
    """share in merged groups (many-to-one, one-to-many, many-to-many): taught by the merged-span term"""
    unmatched: float
    """share with no student counterpart (zero-width tokens)"""
    mapped_positions: float
    """share taught by the mapped KD: one-to-one, and the two tokens each other's counterpart in `student_vocab_map`
    (the other one-to-one positions are taught as merged spans are)"""
    mapped_mass: float
    """share of the teacher's top-k mass that maps onto student ids"""
    student_per_teacher_token: float
    """student tokens per teacher token over the completions"""
    records: int = 0
    """records aligned (and trained on)"""
    empty: int = 0
    """of those, completions with no text: only the end-of-turn token, or nothing"""
    cut: int = 0
    """of those, completions cut back to their last whole UTF-8 character (ended inside one, or stray bytes)"""
    cut_tokens: int = 0
    """teacher tokens those cuts dropped (the end-of-turn token included)"""
    skipped: int = 0
    """records left out: their text could not be aligned (`skipped_reason` says why, for the first)"""
    skipped_reason: str = ""

    def summary(self) -> str:
        counted = [
            f"{self.empty} completion(s) with no text (an end-of-turn token alone, trained on, or nothing)"
            * bool(self.empty),
            f"{self.cut} completion(s) cut back to their last whole character ({self.cut_tokens} teacher tokens "
            "dropped)" * bool(self.cut),
            f"{self.skipped} record(s) left out: {self.skipped_reason}" * bool(self.skipped),
        ]
        return (
            f"teacher positions {self.one_to_one:.1%} one-to-one ({self.mapped_positions:.1%} with counterparts in "
            f"the vocabulary map: taught by KD), {self.merged:.1%} merged, {self.unmatched:.1%} unmatched; "
            f"{self.mapped_mass:.1%} of the teacher's top-k mass maps onto student ids; "
            f"{self.student_per_teacher_token:.2f} student tokens per teacher token"
            + "".join(f"; {c}" for c in counted if c)
        )

    def warnings(self) -> list[str]:
        if self.one_to_one >= ONE_TO_ONE_WARNING:
            return []
        return [
            f"only {self.one_to_one:.1%} of the teacher's positions align one-to-one with the student's tokens; "
            "the rest learn from the teacher's probability of each merged span alone (--xt-merged, weighed by "
            "--xt-weight), a coarser signal, so expect less from KD than with a student of the teacher's tokenizer"
        ]


class _Ragged:
    """Arrays of different lengths stored end to end: item i is values[offsets[i]:offsets[i + 1]]."""

    def __init__(self, parts: Sequence[np.ndarray], dtype: Any) -> None:
        self.values = np.concatenate([np.asarray(p, dtype) for p in parts]) if parts else np.zeros(0, dtype)
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)]).astype(np.int64)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class AlignedRecords(Sequence[AlignedRecord]):
    """The records a cross-tokenizer run trains on, made once by `retokenize`: per record the student's prompt and
    completion ids and the alignment's bounds, flat; item i reads the teacher's record from `records` (a memory-
    mapped cache) when asked, so set-up holds no top-k arrays."""

    def __init__(
        self,
        records: Sequence[Record],
        kept: list[tuple[int, np.ndarray, np.ndarray, Alignment]],
        report: AlignmentReport,
    ) -> None:
        """kept: per record its index in `records`, the student's prompt and completion ids and the alignment."""
        self.records, self.report = records, report
        self.indices = np.array([i for i, *_ in kept], np.int64)  # (n,) which of `records` each one is
        self._prompts = _Ragged([p for _, p, _, _ in kept], np.int32)
        self._completions = _Ragged([c for _, _, c, _ in kept], np.int32)
        self._teacher_bounds = _Ragged([a.teacher_bounds for *_, a in kept], np.int32)
        self._student_bounds = _Ragged([a.student_bounds for *_, a in kept], np.int32)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> AlignedRecord:  # type: ignore[override]
        teacher = self.records[int(self.indices[i])]
        completion = self._completions[i]
        t = len(completion)
        student = Record(self._prompts[i], completion, np.zeros((t, 0), np.int32), np.zeros((t, 0), np.float32),
                         np.full(t, np.nan, np.float32), teacher.meta)  # fmt: skip
        bounds = (self._teacher_bounds[i].astype(np.int64), self._student_bounds[i].astype(np.int64))
        return AlignedRecord(student, teacher, Alignment(*bounds))

    def lengths(self) -> np.ndarray:
        """(n, 2) the student's prompt and completion tokens of each record."""
        return np.stack([self._prompts.lengths(), self._completions.lengths()], axis=-1)


def student_vocab_map(teacher_tok: Any, student_tok: Any) -> torch.Tensor:
    """(len(teacher_tok),) teacher id → student id of the same bytes (−1: none), the eos sent to the student's."""
    vmap = vocab_map(teacher_tok, student_tok)
    if teacher_tok.eos_token_id is not None:
        vmap[teacher_tok.eos_token_id] = student_tok.eos_token_id
    return vmap


def retokenize(
    records: Sequence[Record],
    teacher_tok: Any,
    student_tok: Any,
    indices: Sequence[int] | None = None,
    vmap: torch.Tensor | None = None,
) -> AlignedRecords:
    """`records` (those of `indices`, default all) re-tokenised by the student and aligned to the teacher's positions
    (see module doc), with their `AlignmentReport` as `.report` (vmap: `student_vocab_map`, made if None).

    Raises DistillError when the student has no eos token, or when no record at all can be aligned.
    """
    from tqdm import tqdm

    if student_tok.eos_token_id is None:
        raise DistillError("The student's tokenizer has no eos token to end a completion with; set eos_token in it.")
    vmap = student_vocab_map(teacher_tok, student_tok) if vmap is None else vmap
    same = tokenizer_fingerprint(student_tok) == tokenizer_fingerprint(teacher_tok)
    eos_t, eos_s = teacher_tok.eos_token_id, student_tok.eos_token_id  # one id where the tokenizers are the same
    indices = range(len(records)) if indices is None else indices
    vmap_np = vmap.numpy()
    kept, tally = [], _Tally()
    for i in tqdm(indices, desc="re-tokenise", dynamic_ncols=True, leave=False):
        rec = records[int(i)]
        ids = rec.completion_ids.tolist()
        ends = bool(ids) and ids[-1] == eos_t
        body = ids[:-1] if ends else ids
        empty, whole = not body, len(body)
        if same:  # the teacher's ids are the student's: every position its own group, no text needed
            prompt, student, alignment = rec.prompt_ids.tolist(), body, Alignment.identity(len(ids))
        else:
            whole = whole_characters(teacher_tok, body)
            cut, ends = body[:whole], ends and whole == len(body)  # a cut completion loses its eos too
            text = teacher_tok.decode(cut, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            prompt_text = teacher_tok.decode(rec.prompt_ids.tolist(), skip_special_tokens=False)
            prompt = student_tok(prompt_text, add_special_tokens=False)["input_ids"]
            student = student_tok(text, add_special_tokens=False)["input_ids"]
            try:
                alignment = align_text(text, teacher_tok, cut, student_tok, student, ends, f"cache record {rec.key}")
            except DistillError as e:
                tally.skipped, tally.reason = tally.skipped + 1, tally.reason or str(e)
                continue
        completion = np.asarray(student + [eos_s] * ends, np.int32)
        dropped = len(ids) - alignment.num_teacher if whole < len(body) else 0  # teacher tokens the cut left out
        tally.add(rec, completion, alignment, vmap_np, empty, dropped)
        kept.append((int(i), np.asarray(prompt, np.int32), completion, alignment))
    if not kept and tally.skipped:
        raise DistillError(f"None of the {tally.skipped} records could be aligned to the student's tokens: "
                           f"{tally.reason}")  # fmt: skip
    return AlignedRecords(records, kept, tally.report())


def align_text(
    text: str, teacher_tok: Any, teacher_ids: list[int], student_tok: Any, student_ids: list[int], ends: bool, what: Any
) -> Alignment:
    """Both sides' ids of `text` grouped by byte spans; with `ends`, one end-of-turn token after each (not in the
    ids), zero-width at the end: the last group, one-to-one. `what` names the trace in the error.

    Raises DistillError when a tokenizer's ids do not spell the text (a normalising tokenizer).
    """
    try:
        t_spans, s_spans = token_spans(teacher_tok, text, teacher_ids), token_spans(student_tok, text, student_ids)
    except ValueError as e:
        raise DistillError(
            f"Cannot align {what}: {e}. Cross-tokenizer distillation needs tokenizers that spell text byte for byte "
            "(no normalisation such as lower-casing or NFKC)."
        ) from e
    end = len(text.encode())
    return align_spans(t_spans + [(end, end)] * ends, s_spans + [(end, end)] * ends)


def whole_characters(tokenizer: Any, ids: Sequence[int]) -> int:
    """How many of `ids`, from the first, spell whole UTF-8 characters: all of them when their bytes decode, else
    those before the token that holds the first byte of a character cut off (by --max-new-tokens) or invalid (a
    stray byte). Tokens whose bytes are unknown are taken as whole (the alignment then judges the text)."""
    table = token_bytes(tokenizer)
    pieces = [table[i] if 0 <= i < len(table) else None for i in ids]
    if any(p is None for p in pieces):
        return len(ids)
    try:
        b"".join(pieces).decode("utf-8")
        return len(ids)
    except UnicodeDecodeError as e:
        ends = np.cumsum([len(p) for p in pieces])
        return int(np.searchsorted(ends, e.start, side="right"))  # the tokens that end by the first bad byte


class _Tally:
    """The figures of `AlignmentReport`, summed record by record while `retokenize` holds each one's arrays."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(KINDS, 0)
        self.records = self.pairs = self.student = self.empty = self.cut = self.cut_tokens = self.skipped = 0
        self.top_mass = self.mapped = 0.0
        self.reason = ""

    def add(
        self, rec: Record, completion: np.ndarray, alignment: Alignment, vmap: np.ndarray, empty: bool, dropped: int
    ) -> None:
        """One aligned record: its student completion ids, whether it had no text, the teacher tokens its cut dropped
        (0: not cut); vmap (V_t,) as `student_vocab_map`, in numpy (a small-tensor op per record is slow)."""
        n = alignment.num_teacher
        self.cut, self.cut_tokens = self.cut + bool(dropped), self.cut_tokens + dropped
        for kind, positions in alignment.counts.items():
            self.counts[kind] += positions
        self.records, self.student, self.empty = (
            self.records + 1,
            self.student + alignment.num_student,
            self.empty + empty,
        )
        t_size, s_size = np.diff(alignment.teacher_bounds), np.diff(alignment.student_bounds)
        one = (t_size == 1) & (s_size == 1)  # one-to-one groups: counterparts where the map pairs their two tokens
        teacher = rec.completion_ids[alignment.teacher_bounds[:-1][one]]
        self.pairs += int((_map(teacher, vmap) == completion[alignment.student_bounds[:-1][one]]).sum())
        p = np.exp(rec.topk_logprobs[:n].astype(np.float64))  # (n, k): the top-k's mass, and the part that maps
        self.top_mass, self.mapped = self.top_mass + p.sum(), self.mapped + p[_map(rec.topk_ids[:n], vmap) >= 0].sum()

    def report(self) -> AlignmentReport:
        n_t = sum(self.counts.values())
        merged = self.counts["many_to_one"] + self.counts["one_to_many"] + self.counts["many_to_many"]
        return AlignmentReport(
            self.counts["one_to_one"] / max(n_t, 1), merged / max(n_t, 1), self.counts["unmatched"] / max(n_t, 1),
            self.pairs / max(n_t, 1), self.mapped / max(self.top_mass, 1e-300), self.student / max(n_t, 1),
            self.records, self.empty, self.cut, self.cut_tokens, self.skipped, self.reason,
        )  # fmt: skip


def _map(ids: np.ndarray, vmap: np.ndarray) -> np.ndarray:
    """vmap applied to ids of any shape; −1 for ids beyond it (a teacher embedding padded past its tokenizer)."""
    return np.where(ids < len(vmap), vmap[np.minimum(ids, len(vmap) - 1)], -1)


def collate_aligned(rows: Sequence[Sequence[AlignedRecord]], max_length: int, pad_id: int) -> Batch:
    """Pack the students' records as `collate` does, with the teacher's rows of what each row keeps."""
    batch = collate([[r.student for r in row] for row in rows], max_length, pad_id, 0, 0)
    width = batch.input_ids.shape[1]
    alignments, parts = [], []
    for row in rows:
        at = 0
        for r in row:  # the same cut as collate's: a row holds `width` tokens
            p = len(r.student.prompt_ids)
            length = min(p + len(r.student.completion_ids), width - at)
            alignment = r.alignment.cut(max(length - p, 0))
            n, rec = alignment.num_teacher, r.teacher
            tail = rec.tail_logprobs if rec.tail_logprobs is not None else topk_tail_logprobs(rec.topk_logprobs)
            parts.append((rec.completion_ids[:n], rec.topk_ids[:n], rec.topk_logprobs[:n], tail[:n],
                          rec.sampled_logprobs[:n]))  # fmt: skip
            alignments.append(alignment)
            at += length
    ids, topk_ids, topk_lp, tail, trace = (np.concatenate(column) for column in zip(*parts, strict=True))
    batch.aligned = AlignedTeacher(
        *Alignment.concat(alignments).tensors(),
        torch.from_numpy(ids.astype(np.int64)),
        torch.from_numpy(topk_ids.astype(np.int64)),
        torch.from_numpy(topk_lp.astype(np.float32)),
        torch.from_numpy(tail.astype(np.float32)),
        torch.from_numpy(trace.astype(np.float32)),
    )
    return batch
