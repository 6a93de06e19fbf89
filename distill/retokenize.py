"""A teacher cache read by a student of another tokenizer: each record's text re-tokenised and aligned.

`distill train --cross-tokenizer` trains on these instead of the cache's ids (the loss is
distill.losses.cross_tokenizer). Choices:
- alignment by text: a record's completion ids decode, special tokens kept, to the trace's text; the
  student's tokenizer re-tokenises that text, and byte spans of both sides group their positions. The
  student's CE is on its own tokens; the teacher's rows stay as cached (top-k, tail, trace logprob);
- the prompt the teacher saw is re-tokenised as text too, so the student learns under the teacher's
  rendering (chat template, instruction, think prefix): evaluate it with the same template;
- where the two tokenizers are the same (fingerprint), the teacher's ids are the student's: sampled ids need
  not be the text's canonical encoding, and re-encoding could change them where nothing differs;
- the end of the turn: a completion that ends with the teacher's eos ends with the student's; both are
  zero-width spans after the text, so they form the last one-to-one group, and the vocabulary map sends
  the teacher's eos to the student's (their strings may differ: <|im_end|>, <|eot_id|>);
- done once at set-up (a progress bar), kept in memory: per record a few small arrays and its groups.
  A record cut by --max-length keeps the groups wholly inside the cut; the student positions of a group
  the cut splits keep their CE only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill.cache import Record
from distill.cache.format import topk_tail_logprobs
from distill.data import Batch, collate
from distill.errors import DistillError
from distill.fingerprint import tokenizer_fingerprint
from distill.losses.cross_tokenizer import (
    Alignment,
    align_spans,
    alignment_shares,
    group_kind,
    project_topk,
    token_spans,
    vocab_map,
)

ONE_TO_ONE_WARNING = 0.5  # below this share of one-to-one teacher positions a run warns: ULD teaches the rest


@dataclass
class AlignedRecord:
    """One cache record as the student reads it, and how its positions meet the teacher's."""

    student: Record
    """the student's prompt and completion ids; no teacher arrays (top-k width 0)"""
    teacher: Record
    """the cache's record: teacher ids, top-k, tail, trace logprobs"""
    alignment: Alignment


@dataclass
class AlignedTeacher:
    """The teacher's rows of a micro-batch's records, in the order of the student's loss positions."""

    alignments: list[Alignment]
    """one per record, in row order (the order `targets != IGNORE_INDEX` flattens the student's positions)"""
    ids: torch.Tensor
    """(N_t,) long: the teacher's trace ids"""
    topk_ids: torch.Tensor
    """(N_t, k) long"""
    topk_logprobs: torch.Tensor
    """(N_t, k) float32 raw logprobs"""
    tail_logprobs: torch.Tensor
    """(N_t,) float32 log mass outside the top-k"""
    trace_logprobs: torch.Tensor
    """(N_t,) float32 the teacher's logprob of its trace token (NaN where unknown)"""

    def to(self, device: Any) -> AlignedTeacher:
        move = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return AlignedTeacher(self.alignments, **move)


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

    def summary(self) -> str:
        return (
            f"teacher positions {self.one_to_one:.1%} one-to-one ({self.mapped_positions:.1%} with counterparts in "
            f"the vocabulary map: taught by KD), {self.merged:.1%} merged, {self.unmatched:.1%} unmatched; "
            f"{self.mapped_mass:.1%} of the teacher's top-k mass maps onto student ids; "
            f"{self.student_per_teacher_token:.2f} student tokens per teacher token"
        )

    def warnings(self) -> list[str]:
        if self.one_to_one >= ONE_TO_ONE_WARNING:
            return []
        return [
            f"only {self.one_to_one:.1%} of the teacher's positions align one-to-one with the student's tokens; "
            "the rest learn from the teacher's probability of each merged span alone (--xt-merged, weighed by "
            "--xt-weight), a coarser signal, so expect less from KD than with a student of the teacher's tokenizer"
        ]


def student_vocab_map(teacher_tok: Any, student_tok: Any) -> torch.Tensor:
    """(len(teacher_tok),) teacher id → student id of the same bytes (−1: none), the eos sent to the student's."""
    vmap = vocab_map(teacher_tok, student_tok)
    if teacher_tok.eos_token_id is not None:
        vmap[teacher_tok.eos_token_id] = student_tok.eos_token_id
    return vmap


def retokenize(records: Sequence[Record], teacher_tok: Any, student_tok: Any) -> list[AlignedRecord]:
    """Every record re-tokenised by the student and aligned to the teacher's positions (see module doc).

    Raises DistillError when the student has no eos token or its tokenizer cannot spell a record's text.
    """
    from tqdm import tqdm

    if student_tok.eos_token_id is None:
        raise DistillError("The student's tokenizer has no eos token to end a completion with; set eos_token in it.")
    same = tokenizer_fingerprint(student_tok) == tokenizer_fingerprint(teacher_tok)
    eos_t = teacher_tok.eos_token_id
    out = []
    for rec in tqdm(records, desc="re-tokenise", dynamic_ncols=True, leave=False):
        ids = rec.completion_ids.tolist()
        ends = bool(ids) and ids[-1] == eos_t
        body = ids[:-1] if ends else ids
        text = teacher_tok.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if same:
            prompt, student = rec.prompt_ids.tolist(), body
        else:
            prompt_text = teacher_tok.decode(rec.prompt_ids.tolist(), skip_special_tokens=False)
            prompt = student_tok(prompt_text, add_special_tokens=False)["input_ids"]
            student = student_tok(text, add_special_tokens=False)["input_ids"]
        alignment = align_text(text, teacher_tok, body, student_tok, student, ends, f"cache record {rec.key}")
        completion = np.asarray(student + [student_tok.eos_token_id] * ends, np.int32)
        t = len(completion)
        out.append(
            AlignedRecord(
                Record(
                    np.asarray(prompt, np.int32),
                    completion,
                    np.zeros((t, 0), np.int32),
                    np.zeros((t, 0), np.float32),
                    np.full(t, np.nan, np.float32),
                    rec.meta,
                ),
                rec,
                alignment,
            )
        )
    return out


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


def alignment_report(records: Sequence[AlignedRecord], vmap: torch.Tensor) -> AlignmentReport:
    """The shares of `AlignmentReport` over `records`."""
    shares = alignment_shares([r.alignment for r in records])
    top_mass = mapped = 0.0
    pairs = 0
    for r in records:
        teacher, student = r.teacher.completion_ids, r.student.completion_ids
        pairs += sum(
            len(t) == len(s) == 1 and int(vmap[int(teacher[t[0]])]) == int(student[s[0]]) for t, s in r.alignment.groups
        )
        lp = torch.from_numpy(r.teacher.topk_logprobs)
        _, _, _, share = project_topk(torch.from_numpy(r.teacher.topk_ids), lp, None, vmap)
        mass = lp.double().logsumexp(-1).exp()
        top_mass, mapped = top_mass + float(mass.sum()), mapped + float((share.double() * mass).sum())
    n_t = sum(r.alignment.num_teacher for r in records)
    n_s = sum(r.alignment.num_student for r in records)
    mass = mapped / max(top_mass, 1e-300)
    return AlignmentReport(
        shares["one_to_one"], shares["merged"], shares["unmatched"], pairs / max(n_t, 1), mass, n_s / max(n_t, 1)
    )


def truncate(alignment: Alignment, num_student: int) -> Alignment:
    """The alignment of the first `num_student` student positions: whole groups up to the cut; the student
    positions of a group the cut splits join a last group without teacher positions (CE only)."""
    if num_student >= alignment.num_student:
        return alignment
    kept, cut = [], ()
    for t, s in alignment.groups:
        if s and s[-1] >= num_student:
            cut = tuple(i for i in s if i < num_student)
            break
        kept.append((t, s))
    groups = tuple(kept) + (((), cut),) * bool(cut)
    counts = dict.fromkeys(alignment.counts, 0)
    for t, s in groups:
        counts[group_kind(t, s)] += len(t)
    return Alignment(groups, sum(len(t) for t, _ in groups), num_student, counts)


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
            alignment = truncate(r.alignment, max(length - p, 0))
            n, rec = alignment.num_teacher, r.teacher
            tail = rec.tail_logprobs if rec.tail_logprobs is not None else topk_tail_logprobs(rec.topk_logprobs)
            parts.append((rec.completion_ids[:n], rec.topk_ids[:n], rec.topk_logprobs[:n], tail[:n],
                          rec.sampled_logprobs[:n]))  # fmt: skip
            alignments.append(alignment)
            at += length
    ids, topk_ids, topk_lp, tail, trace = (np.concatenate(column) for column in zip(*parts, strict=True))
    batch.aligned = AlignedTeacher(
        alignments,
        torch.from_numpy(ids.astype(np.int64)),
        torch.from_numpy(topk_ids.astype(np.int64)),
        torch.from_numpy(topk_lp.astype(np.float32)),
        torch.from_numpy(tail.astype(np.float32)),
        torch.from_numpy(trace.astype(np.float32)),
    )
    return batch
